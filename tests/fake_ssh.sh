#!/bin/sh
# SPDX-License-Identifier: BSL-1.0
# A stand-in for the ssh client, for launcher_test: takes ssh's options, then
# "--", the host and ONE command string, and runs that string the way sshd
# does, through the login shell (`sh -c STRING`), on this machine. So the
# quoting of coropipe::ssh_launcher() is checked without a server.
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    -T) shift ;;
    -e|-o|-F|-i|-l|-p) shift 2 ;;
    *) echo "fake_ssh: unexpected argument '$1'" >&2; exit 255 ;;
  esac
done
if [ $# -ne 2 ]; then
  echo "fake_ssh: expected HOST COMMAND after --, got $# arguments" >&2
  exit 255
fi
COROPIPE_FAKE_SSH_HOST=$1
export COROPIPE_FAKE_SSH_HOST
exec sh -c "$2"
