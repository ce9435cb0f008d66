"""Installs sgllie. The top-level kernels/ (Triton) is installed as the subpackage sgllie.kernels.

The compiled extension sgllie._C (csrc/) holds the fused CPU kernels and, where torch has CUDA and
nvcc is found, the CUDA kernels; see ext_modules().
"""
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def version() -> str:
    for line in (ROOT / "sgllie" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise RuntimeError("sgllie/__init__.py has no __version__")


DEFAULT_CUDA_ARCHS = "8.0;9.0a"  # A100 and H100 class; TORCH_CUDA_ARCH_LIST overrides


def cuda_build_reason(cuda_home) -> str:
    """Why the CUDA kernels (csrc/cuda) are not built here, or "" when they are."""
    import torch
    if os.environ.get("SGLLIE_BUILD_CUDA") == "0":
        return "SGLLIE_BUILD_CUDA=0"
    if torch.version.cuda is None:
        return "this torch is a CPU build"
    if cuda_home is None:
        return "nvcc not found (set CUDA_HOME)"
    return ""


def ext_modules():
    """csrc/ built into sgllie._C with torch's cpp_extension and ninja, when torch is importable:
    the CPU kernels always, the CUDA kernels too when torch has CUDA and nvcc is found.

    The extension is optional: if it cannot be built (no compiler, no torch at build time), the
    package installs without it and sgllie.ops runs on its reference backend.
    """
    rel = lambda paths: sorted(str(p.relative_to(ROOT)) for p in paths)  # noqa: E731
    sources = rel([ROOT / "csrc" / "sgllie.cpp", *(ROOT / "csrc" / "cpu").glob("*.cpp")])
    try:
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("sgllie: torch is not importable at build time: building without sgllie._C "
              "(install torch first and use --no-build-isolation)")
        return [], {}

    class OptionalBuildExt(BuildExtension.with_options(use_ninja=True)):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # a missing compiler must not make the package uninstallable
                if os.environ.get("SGLLIE_REQUIRE_EXT") == "1":  # developers and CI: fail loudly
                    raise
                print(f"sgllie: could not build {ext.name} ({type(e).__name__}: {e}); "
                      "sgllie.ops will use its reference backend")
                self.extensions.remove(ext)  # nothing to install for it

    include_dirs = [str(ROOT / "csrc" / "include")]
    cxx = ["-O3", "-fopenmp"]
    why_no_cuda = cuda_build_reason(CUDA_HOME)
    if why_no_cuda:
        print(f"sgllie: building the CPU kernels only ({why_no_cuda})")
        ext = CppExtension("sgllie._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                           extra_link_args=["-fopenmp"])
    else:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        print(f"sgllie: building the CPU and CUDA kernels (archs {os.environ['TORCH_CUDA_ARCH_LIST']})")
        cuda_dir = ROOT / "csrc" / "cuda"
        ext = CUDAExtension("sgllie._C", sources + rel([*cuda_dir.glob("*.cu"), cuda_dir / "bind.cpp"]),
                            include_dirs=include_dirs + [str(cuda_dir)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17"]},
                            extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": OptionalBuildExt}


EXT_MODULES, CMDCLASS = ext_modules()

setup(
    name="sgllie",
    version=version(),
    description="SGZ semantic-guided zero-shot low-light image/video enhancement with fused ops",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["sgllie", "sgllie.ops", "sgllie.kernels"],
    package_dir={"sgllie.kernels": "kernels"},
    package_data={"sgllie": ["weights/*.pth", "weights/*.md"]},
    install_requires=["torch>=2.4", "numpy", "opencv-python-headless", "av", "tqdm", "matplotlib", "pillow",
                      "scikit-image", "pypiqe"],
    extras_require={"test": ["pytest", "pytest-benchmark", "triton; platform_system == 'Linux'"]},
    ext_modules=EXT_MODULES,
    cmdclass=CMDCLASS,
)
