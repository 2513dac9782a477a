# bench/lib.sh: helpers shared by the benchmark scripts (source it).

# median_ms CMD...: median wall time in ms of $RUNS runs of CMD (output discarded).
median_ms() {
    local times=() t0 t1
    for ((i = 0; i < RUNS; i++)); do
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        times+=($(((t1 - t0) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n |
        awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] / 1000 }'
}

# best_s CMD...: best wall time in seconds of $RUNS runs of CMD.
best_s() {
    local best="" t0 t1 d
    for ((i = 0; i < RUNS; i++)); do
        t0=$(date +%s%N)
        "$@" >/dev/null
        t1=$(date +%s%N)
        d=$(((t1 - t0) / 1000))
        if [ -z "$best" ] || [ "$d" -lt "$best" ]; then best=$d; fi
    done
    awk -v us="$best" 'BEGIN { printf "%.3f", us / 1e6 }'
}
