#!/usr/bin/env bash
# Builds Go commands into a directory, and says so: a first build on an empty
# build cache compiles about 1,800 packages (Kubernetes' apiserver and client
# libraries, etcd, the registry, containers/image), which takes minutes on two
# cores. On a terminal it counts the packages as they are compiled; elsewhere
# (CI logs) it prints a line every 250 packages. A build with a warm cache
# compiles only what changed and prints nothing more.
#
# usage: hack/build.sh OUTDIR [GO BUILD FLAG...] PACKAGE...
set -o errexit
set -o nounset
set -o pipefail

out=$1
shift
names=()
for arg in "$@"; do
    case "${arg}" in
    -*) ;;
    *) names+=("${out}/$(basename "${arg}")") ;;
    esac
done
echo "building ${names[*]} (a first build compiles about 1,800 packages: several minutes on 2 cores; later builds take seconds)" >&2

# "go build -v" names each package it compiles (not those from the cache)
# on stderr, where compile errors go too: count the names, pass the rest.
tty=false
[ -t 2 ] && tty=true
go build -v -o "${out}/" "$@" 2>&1 >/dev/null | awk -v tty="${tty}" '
    /^[^ :]+$/ {
        n++
        if (tty == "true") { printf "\r  %d packages compiled", n > "/dev/stderr"; shown = 1 }
        else if (n % 250 == 0) { printf "  %d packages compiled\n", n > "/dev/stderr" }
        next
    }
    {
        if (shown) { printf "\n" > "/dev/stderr"; shown = 0 }
        print > "/dev/stderr"
    }
    END { if (shown) printf "\n" > "/dev/stderr" }
'
