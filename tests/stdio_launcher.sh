#!/bin/sh
# SPDX-License-Identifier: BSL-1.0
# A stand-in for a launcher that forwards stdio and passes an argv on, the
# way `srun --ntasks=1 --quiet PROG ARGS...` and `kubectl exec -i POD -- PROG
# ARGS...` do: launcher_test runs pool workers through it. It marks the
# environment so that a test can see the worker really went through it.
COROPIPE_LAUNCHED_BY=stdio_launcher
export COROPIPE_LAUNCHED_BY
exec "$@"
