# Sourced by the device scripts (not run alone): install_carried_wheels installs the wheels in $WHEELS (carried to the
# GPU machine, which has no network: scripts/fetch_device_wheels.sh fetches them) --no-deps into the target folder
# $SITE (default: a new temporary one) and puts it first on PYTHONPATH. Needs PY and WHEELS; exits 3 if pip fails.
install_carried_wheels() {
  SITE=${SITE:-$(mktemp -d)/site}
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "no wheels in $WHEELS: nothing to install (scripts/fetch_device_wheels.sh fetches them)"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(compgen -G "$WHEELS/*.whl" | wc -l) wheel(s) from $WHEELS into $SITE"
}
