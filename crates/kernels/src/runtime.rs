//! Process set-up shared by every stage binary: logging and the allocator.

/// Call first thing in `main`: logging to stderr (`RUST_LOG`, default `info`) and
/// allocator tuning.
///
/// Candle allocates and frees tensors of many megabytes at every training step. By
/// default glibc serves those with `mmap` and unmaps them on free, so every step
/// page-faults its memory in again (perf showed the kernel's page-fault path above 15%).
/// Keeping large blocks on the heap and not trimming it measured 1.45x faster student
/// training here.
///
/// candle runs elementwise ops on its own spinning thread pool, beside the rayon pool that
/// runs the GEMMs and our kernels; on few cores the two pools spin against each other.
/// One elementwise thread (`CANDLE_NUM_THREADS=1` unless the user set it) measured 1.27x
/// faster student training at batch 20 on 2 cores, and 1.09x at batch 64.
pub fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // Before any thread starts: candle reads it once, when its pool is first used.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .try_init();
}

/// One malloc arena for the whole process; call right after [`init`], before any thread
/// starts. glibc gives each thread that allocates at once an arena of its own, and with
/// nothing trimmed (see [`init`]) each keeps its own high-water mark: preprocess's peak
/// depended on how its threads' detector passes happened to coincide (msceleb-samples:
/// 324 MiB on one thread, 451-510 MiB on two; one arena: 330-372 MiB, as fast). Training
/// gains nothing from it (737-758 vs 745-766 MiB) and loses 2.5% of its speed, so only the
/// stages that detect faces take it. (glibc's own thresholds instead, big blocks mapped and
/// the heap trimmed, gave preprocess 288-302 MiB at 1.5x the time.)
pub fn single_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's arena limit; before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Colours only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>): a log written to a file or a pipe stays plain text.
pub fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// A stage binary's `main`: set-up, then the body; exit code 0 on success, else the
/// error chain on stderr and exit code 1 (clap's usage errors exit with 2 before this).
pub fn main<E: std::fmt::Display>(body: impl FnOnce() -> Result<(), E>) -> std::process::ExitCode {
    init();
    match body() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--jobs N`: the global rayon pool's size (every stage's parallel work and GEMMs run
/// there); `None` keeps rayon's default, one thread per core. Call before any parallel
/// work; the one place the stage binaries set it.
pub fn set_jobs(jobs: Option<usize>) -> Result<(), rayon::ThreadPoolBuildError> {
    match jobs {
        Some(j) => rayon::ThreadPoolBuilder::new()
            .num_threads(j)
            .build_global(),
        None => Ok(()),
    }
}
