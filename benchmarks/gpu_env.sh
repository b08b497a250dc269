# Sourced by the GPU scripts: the device image has JAX (CUDA), flax, optax, orbax, transformers
# and torch but not grain; its wheels (grain, array_record, portpicker, tensorboardX, Python 3.12)
# travel in .whl/ and are installed to /tmp/site.
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
