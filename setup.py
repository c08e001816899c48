"""The optional compiled part of tfda: the kernel EnSF's mixture flow for the CPU.

Everything else is configured in pyproject.toml. The extension is optional: where no C
compiler is found, tfda installs without it and runs the same flow in torch
(tfda.da.gaussian_mixture.compiled_flow_available() says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tfda.da._flow",
            sources=["da/_flow.c"],
            depends=["da/_flow_body.h"],
            # -fno-wrapv: Python's own -fwrapv makes int indexing wrap and the loops ~25 % slower
            extra_compile_args=["-O3", "-fno-wrapv"],
            optional=True,
        )
    ]
)
