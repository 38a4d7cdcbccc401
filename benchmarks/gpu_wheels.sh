#!/usr/bin/env bash
# Fill .gpuwhl/ (git-ignored; carry it: run(..., carry=[".gpuwhl"])) with the wheels the GPU image lacks, for its
# Python 3.12 on x86_64: diffusers and the notebook test stack. gpu_env.sh installs them without dependencies
# into /tmp/site, ahead of the image's packages, so this list holds no package the image brings (torch, triton,
# numpy, pillow, jinja2, ...).
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpuwhl \
  diffusers==0.42.1 papermill nbformat nbclient fastjsonschema jsonschema jsonschema-specifications referencing \
  rpds-py attrs "ipykernel>=6.29,<7" ipywidgets widgetsnbextension jupyterlab-widgets comm jupyter-client \
  jupyter-core traitlets pyzmq tornado debugpy matplotlib-inline nest-asyncio ipython ipython-pygments-lexers \
  pygments prompt-toolkit wcwidth jedi parso decorator executing asttokens pure-eval stack-data pexpect \
  ptyprocess psutil platformdirs python-dateutil six tenacity tqdm entrypoints ansicolors pytest-timeout \
  pytest-xdist execnet
ls .gpuwhl | wc -l; du -sh .gpuwhl
