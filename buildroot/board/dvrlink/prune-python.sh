#!/bin/sh
#
# prune-python.sh TARGET_DIR [LIST]
#
# Removes from every TARGET_DIR/usr/lib/python3.X what dvrlinkd never imports:
# the entries of LIST (default: python-prune.txt next to this script), which
# says what and why. post-build.sh runs it; Buildroot has compiled and dropped
# the sources by then (BR2_PACKAGE_PYTHON3_PYC_ONLY), so an entry is removed as
# a folder, a .py, a .pyc, its __pycache__ files and an extension module.

set -eu

TARGET_DIR="${1:?usage: prune-python.sh TARGET_DIR [LIST]}"
prune_list="${2:-$(dirname "$0")/python-prune.txt}"

fail() {
	echo "prune-python.sh: $*" >&2
	exit 1
}

[ -r "$prune_list" ] || fail "$prune_list is missing: it belongs next to prune-python.sh"

prune_module() { # BASE MODULE: MODULE may hold shell globs
	dir="$(dirname "$2")"
	name="$(basename "$2")"
	[ "$dir" = . ] && dir="" || dir="$dir/"
	# The globs in $dir and $name expand here, and nowhere else.
	# shellcheck disable=SC2086,SC2231
	for path in "$1"/$dir$name "$1"/$dir$name.py "$1"/$dir$name.pyc "$1"/$dir$name.*.so \
		"$1"/$dir$name.so "$1"/${dir}__pycache__/$name.*.pyc; do
		if [ -e "$path" ] || [ -L "$path" ]; then
			rm -rf "$path"
		fi
	done
}

prune_python() { # LIBDIR: usr/lib/python3.X of the target
	while read -r scope entry rest; do
		case "$scope" in
		"" | "#"*) continue ;;
		esac
		if [ -z "$entry" ] || [ -n "$rest" ]; then
			fail "$prune_list: bad line '$scope $entry $rest': one scope and one entry"
		fi
		case "$scope" in
		stdlib) prune_module "$1" "$entry" ;;
		site) prune_module "$1/site-packages" "$entry" ;;
		any) find "$1" -name "$entry" -prune -exec rm -rf {} + ;;
		*) fail "$prune_list: unknown scope '$scope' (stdlib, site or any)" ;;
		esac
	done <"$prune_list"
}

for libdir in "$TARGET_DIR"/usr/lib/python3.*; do
	[ -d "$libdir" ] || continue
	before="$(du -sk "$libdir" | cut -f1)"
	prune_python "$libdir"
	after="$(du -sk "$libdir" | cut -f1)"
	echo "prune-python.sh: ${libdir#"$TARGET_DIR"/} ${before} kB -> ${after} kB ($(basename "$prune_list"))"
done
