//! The `occystrap` command. Thin: parse, run, map errors to exit codes.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(cli.global.verbose, cli.global.debug);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = cli::run(cli) => r,
            _ = async {
                interrupted().await;
                // Before the run's future is dropped: blocking work
                // (extracting, copying) checks this flag and stops.
                occystrap::cancel::request();
            } => Err(occystrap::Error::Interrupted.into()),
        }
    });
    // Dropping the run's future above stopped its downloads and removed the
    // temp files it owned. Blocking work still running (a layer being
    // extracted or copied) sees the cancel flag within a few milliseconds,
    // fails, and drops the sink, whose temp files go with it: wait for that,
    // but not for long, so that an interrupted run exits within 2 s.
    let grace = if occystrap::cancel::requested() {
        std::time::Duration::from_millis(1500)
    } else {
        std::time::Duration::from_secs(2)
    };
    runtime.shutdown_timeout(grace);
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => fail(&e),
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP, so that the run's future is dropped
/// and its temp files removed instead of the process dying mid-write.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let recv = |s: &mut Option<tokio::signal::unix::Signal>| {
        let s = s.take();
        async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = recv(&mut term) => {}
        _ = recv(&mut hup) => {}
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    // One line: the error and its causes, joined.
    let msg = format!("{e:#}").replace(['\n', '\r'], " ");
    let _ = writeln!(std::io::stderr(), "error: {msg}");
    let usage = e
        .downcast_ref::<occystrap::Error>()
        .is_some_and(|e| e.is_usage());
    if usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Lift the soft fd limit to the hard one: parallel layers hold temp files
/// and sockets. (Removing or walking a deep tree needs only a few fds at
/// any depth: see `occystrap::rmtree`.)
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn init_logging(verbose: bool, debug: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug"
    } else if verbose {
        "occystrap=debug,warn"
    } else {
        // Retries and other recoverable events stay quiet unless asked for:
        // a failed run's stderr is exactly one error line.
        "error"
    };
    let filter =
        EnvFilter::try_from_env("OCCYSTRAP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
