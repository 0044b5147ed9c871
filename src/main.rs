//! The `occystrap` command. Thin: parse, run, map errors to exit codes.

// Text meant for a terminal goes through `escape::TextOut`, which shows
// control characters from images and registries instead of sending them.
#![deny(clippy::print_stdout, clippy::print_stderr)]

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
    let server = match &cli.command {
        cli::Command::Proxy(args) => Some(args.log_format),
        _ => None,
    };
    // Under `mirror --progress json`, stderr is JSON lines, logs included.
    let json = matches!(&cli.command, cli::Command::Mirror(a) if a.json_progress());
    init_logging(cli.global.verbose, cli.global.debug, server, json);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    // The run's one token: the signal thread cancels it, the run's
    // blocking work checks it.
    let cancel = occystrap::cancel::CancelToken::new();
    let signalled = watch_signals(cancel.clone());
    let result = runtime.block_on(async {
        tokio::select! {
            r = cli::run(cli, cancel.clone()) => r,
            _ = async {
                match signalled {
                    Some(rx) => { let _ = rx.await; }
                    // No watcher thread: listen here (the old way).
                    None => {
                        interrupted().await;
                        cancel.cancel();
                    }
                }
            } => Err(occystrap::Error::Interrupted.into()),
        }
    });
    RUN_DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
    // Dropping the run's future above stopped its downloads and removed the
    // temp files it owned. Blocking work still running (a layer being
    // extracted or copied) sees the cancelled token within a few milliseconds,
    // fails, and drops the sink, whose temp files go with it: wait for that,
    // but not for long, so that an interrupted run exits within 2 s.
    let grace = if cancel.is_cancelled() {
        let since = SIGNALLED_AT.get().map(|t| t.elapsed()).unwrap_or_default();
        SHUTDOWN_BY.saturating_sub(since)
    } else {
        std::time::Duration::from_secs(2)
    };
    runtime.shutdown_timeout(grace);
    // From here on the watchdog must not exit the process under our feet.
    std::mem::forget(EXITING.lock());
    // Blocking work that did not finish in time still holds temp files.
    occystrap::cancel::forced_cleanup();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        // A server's SIGINT/SIGTERM is how it is stopped, not a failure.
        Err(e)
            if server.is_some()
                && matches!(e.downcast_ref(), Some(occystrap::Error::Interrupted)) =>
        {
            let _ = writeln!(std::io::stderr(), "proxy: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Taken by whoever ends the process: `main` when the run has unwound, or
/// the signal watchdog when it has not in time.
static EXITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long after a signal the run's future may take to be dropped (which
/// removes the temp files it owns) before the watchdog ends the process:
/// SIGINT and SIGTERM end a run within 2 s, whatever it is blocked on.
const UNWIND_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);
/// When, after a signal, the blocking work still running must be done.
const SHUTDOWN_BY: std::time::Duration = std::time::Duration::from_millis(1500);
/// When, after a signal, the watchdog ends the process whatever happens.
const HARD_LIMIT: std::time::Duration = std::time::Duration::from_millis(1800);

/// When the signal came.
static SIGNALLED_AT: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
/// Set once the run's future is dropped: the run is unwinding, not stuck.
static RUN_DROPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts a thread that listens for SIGINT, SIGTERM and SIGHUP on a runtime
/// of its own, so that a signal is seen even when the main runtime is stuck
/// in a blocking call. On a signal it cancels `cancel` (blocking work
/// checks it), tells the run (the receiver resolves), and ends the
/// process with the error line and exit code of an interrupted run if its
/// future is not dropped within [`UNWIND_GRACE`], or it is still there at
/// [`HARD_LIMIT`]. `None` if the thread cannot be
/// started. Returns once the handlers are installed.
fn watch_signals(
    cancel: occystrap::cancel::CancelToken,
) -> Option<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready_tx.send(false);
                return;
            };
            rt.block_on(async move {
                let wait = interrupted_ready(ready_tx);
                wait.await;
            });
            let at = *SIGNALLED_AT.get_or_init(std::time::Instant::now);
            cancel.cancel();
            let _ = tx.send(());
            std::thread::sleep(UNWIND_GRACE);
            // A run that is unwinding gets until the hard limit; one still
            // stuck where it was is ended now.
            if RUN_DROPPED.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(HARD_LIMIT.saturating_sub(at.elapsed()));
            }
            // Blocks for good if main is already ending the process.
            let _guard = EXITING.lock();
            occystrap::cancel::forced_cleanup();
            let _ = writeln!(std::io::stderr(), "error: interrupted");
            std::process::exit(1);
        })
        .ok()?;
    match ready_rx.recv() {
        Ok(true) => Some(rx),
        _ => None,
    }
}

/// [`interrupted`], saying on `ready` once the handlers are installed.
async fn interrupted_ready(ready: std::sync::mpsc::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    let hup = signal(SignalKind::hangup());
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (int, term, hup) else {
        let _ = ready.send(false);
        return std::future::pending().await;
    };
    let _ = ready.send(true);
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
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
    // One line: the error and its causes, joined. The messages carry text
    // from registries, tar entries and file names: escaped, and a newline
    // in them cannot start a second line.
    let _ = writeln!(
        occystrap::escape::TextOut::new(std::io::stderr().lock()),
        "error: {e:#}"
    );
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

fn init_logging(verbose: bool, debug: bool, server: Option<cli::proxy::LogFormat>, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if debug {
        "debug"
    } else if verbose {
        "occystrap=debug,warn"
    } else if server.is_some() {
        // A server's access log, and the warnings of its long life.
        "occystrap::access=info,occystrap=warn,error"
    } else {
        // Retries and other recoverable events stay quiet unless asked for:
        // a failed run's stderr is exactly one error line.
        "error"
    };
    let filter =
        EnvFilter::try_from_env("OCCYSTRAP_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    if let Some(format) = server {
        let writer = || occystrap::escape::TextOut::new(std::io::stderr());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_ansi(false);
        match format {
            // One object per line: the fields, the time, the level.
            cli::proxy::LogFormat::Json => builder.json().flatten_event(true).init(),
            cli::proxy::LogFormat::Text => builder.with_target(false).init(),
        }
        return;
    }
    if json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(|| occystrap::escape::TextOut::new(std::io::stderr()))
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Log fields carry image-derived text: each event is one write,
        // escaped whole but for its final newline. No colours, whose
        // escapes the writer would show.
        .with_writer(|| occystrap::escape::TextOut::new(std::io::stderr()))
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
}
