#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need (liburing, GoogleTest, fio),
# when they are missing. Needs root or sudo.
set -euo pipefail
packages=(liburing-dev libgtest-dev fio cmake g++ clang-format)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
