#!/usr/bin/env bash
# Run `tox -e unit` as it must pass anywhere: as an unprivileged user (nobody), with no
# PostgreSQL server and no promtool, prometheus, logrotate or systemd-analyze, from a copy of
# the work tree that user owns. As root: the tools are hidden in a private mount namespace.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$repo" ls-files -z --cached --others --exclude-standard \
  | (cd "$repo" && xargs -0 cp --parents --target-directory "$work")
mkdir "$work/home"
# tox of its own, on the system Python: the checkout's may lie where nobody cannot read.
/usr/bin/python3 -m venv "$work/.tox-tools"
"$work/.tox-tools/bin/python" -m pip install -q "tox>=4.20" "tox-uv>=1.11"
chown -R nobody:nogroup "$work"
chmod 755 "$work"
tools="/usr/lib/postgresql /usr/bin/promtool /usr/bin/prometheus /usr/sbin/logrotate"
tools="$tools /usr/bin/systemd-analyze"
hide='for path in '"$tools"'; do
  if [ -d "$path" ]; then mount -t tmpfs none "$path"
  elif [ -e "$path" ]; then mount --bind /dev/null "$path"; fi
done'
cd "$work"
unshare --mount -- sh -c "$hide"'
exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
  env HOME="$1/home" PATH=/usr/bin:/bin "$1/.tox-tools/bin/tox" run -e unit' sh "$work"
