//! `vmm ctl`: a client of the API socket, human-readable or `--json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::Value;
use vmm::api::ApiClient;
use vmm::api::Endpoint;

/// How long `vmm ctl snapshot` waits for the snapshot to be written.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Arguments of `vmm ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket of the running vmm.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
    /// What to do.
    #[arg(value_enum)]
    action: Action,
    /// For `snapshot`: the directory to write (an older snapshot there is replaced).
    #[arg(value_name = "DIR")]
    destination: Option<PathBuf>,
    /// For `snapshot`: end vmm once the snapshot is on disk, instead of sleeping on.
    #[arg(long)]
    exit: bool,
    /// For `snapshot`: first press the sleep button and wait for the guest to suspend itself.
    #[arg(long)]
    sleep: bool,
    /// For `snapshot --sleep`: how long the guest has to suspend itself.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    timeout: u64,
}

/// The API calls `vmm ctl` makes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Action {
    /// The VM's state, vCPUs, memory, uptime and suspend figures.
    Info,
    /// Press the wake button.
    Wakeup,
    /// Press the power button.
    PowerButton,
    /// Pause every vCPU (host side).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Stop the VM now.
    Shutdown,
    /// Follow the VM's events until it stops.
    Events,
    /// Press the sleep button: a guest that handles it suspends itself.
    Sleep,
    /// Save the suspended guest to DIR (`--exit` then ends vmm; `--sleep` first asks the
    /// guest to suspend).
    Snapshot,
}

impl Action {
    fn endpoint(self) -> Endpoint {
        match self {
            Self::Info => Endpoint::Info,
            Self::Wakeup => Endpoint::Wakeup,
            Self::PowerButton => Endpoint::PowerButton,
            Self::Pause => Endpoint::Pause,
            Self::Resume => Endpoint::Resume,
            Self::Shutdown => Endpoint::Shutdown,
            Self::Events => Endpoint::Events,
            Self::Sleep => Endpoint::Sleep,
            Self::Snapshot => Endpoint::Snapshot,
        }
    }
}

/// Runs one `vmm ctl` command.
pub fn run(args: CtlArgs) -> ExitCode {
    // A reader that goes away (`vmm ctl info | head -1`) ends us quietly, as it ends any
    // command-line tool, instead of println! panicking on EPIPE.
    // SAFETY: restoring the default disposition of SIGPIPE; no handler is involved.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let client = ApiClient::new(&args.api_socket);
    // Writing a large guest's memory takes longer than any other request.
    let client = match args.action {
        Action::Snapshot => client.with_timeout(SNAPSHOT_TIMEOUT),
        _ => client,
    };
    let endpoint = args.action.endpoint();
    let path = endpoint.path();
    if let Action::Events = args.action {
        return follow_events(&client, &path, args.json);
    }
    let body = match (&args.action, &args.destination) {
        (Action::Snapshot, Some(destination)) => Some(
            serde_json::json!({
                "destination": destination,
                "then": if args.exit { "exit" } else { "stay" },
            })
            .to_string(),
        ),
        (Action::Snapshot, None) => {
            eprintln!("vmm ctl: snapshot needs the directory to write");
            return ExitCode::from(2);
        }
        (_, Some(_)) => {
            eprintln!("vmm ctl: only snapshot takes a directory");
            return ExitCode::from(2);
        }
        _ if args.exit || args.sleep => {
            eprintln!("vmm ctl: only snapshot takes --exit and --sleep");
            return ExitCode::from(2);
        }
        _ => None,
    };
    if args.sleep {
        if let Err(message) = sleep_until_suspended(&client, Duration::from_secs(args.timeout)) {
            eprintln!("vmm ctl: {message}");
            return ExitCode::FAILURE;
        }
    }
    match client.request(endpoint.method(), &path, body.as_deref().map(str::as_bytes)) {
        Ok((status, body)) if (200..300).contains(&status) => {
            if args.json {
                println!("{body}");
            } else if let Action::Info = args.action {
                print_info(&body);
            } else if let Action::Snapshot = args.action {
                println!(
                    "snapshot written to {} ({} bytes stored of {} bytes of RAM, {} ms)",
                    body["path"].as_str().unwrap_or("?"),
                    body["bytes"],
                    body["memory_bytes"],
                    body["ms"]
                );
            } else {
                println!("{}", body["result"].as_str().unwrap_or("ok"));
            }
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let message = body["error"]
                .as_str()
                .map_or(body.to_string(), str::to_owned);
            eprintln!("vmm ctl: {status}: {message}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("vmm ctl: {}", vmm::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Presses the sleep button and waits until `vm.info` says the guest is suspended.
fn sleep_until_suspended(client: &ApiClient, timeout: Duration) -> Result<(), String> {
    let call = |endpoint: Endpoint| {
        client
            .request(endpoint.method(), &endpoint.path(), None)
            .map_err(|err| vmm::error_chain(&err))
    };
    let (status, body) = call(Endpoint::Sleep)?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("")
        ));
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (_, info) = call(Endpoint::Info)?;
        if info["state"] == "suspended" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the guest did not suspend within {} s of the sleep button (it has no KEY_SLEEP handler?); it is {}",
                timeout.as_secs(),
                info["state"].as_str().unwrap_or("unknown")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn follow_events(client: &ApiClient, path: &str, json: bool) -> ExitCode {
    let events = match client.stream(path) {
        Ok(events) => events,
        Err(err) => {
            eprintln!("vmm ctl: {}", vmm::error_chain(&err));
            return ExitCode::FAILURE;
        }
    };
    for event in events {
        match event {
            Ok(event) if json => println!("{event}"),
            Ok(event) => println!("{}", describe_event(&event)),
            Err(err) => {
                eprintln!("vmm ctl: {}", vmm::error_chain(&err));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `at_ms event key=value...` for people.
fn describe_event(event: &Value) -> String {
    let mut text = format!(
        "{} {}",
        event["at_ms"].as_u64().unwrap_or_default(),
        event["event"].as_str().unwrap_or("event")
    );
    if let Some(fields) = event.as_object() {
        for (key, value) in fields {
            if key != "at_ms" && key != "event" {
                text.push_str(&format!(" {key}={value}"));
            }
        }
    }
    text
}

fn print_info(info: &Value) {
    let text = |key: &str| match &info[key] {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    println!("state:        {}", text("state"));
    let vcpus: Vec<String> = info["vcpus"]
        .as_array()
        .map(|vcpus| {
            vcpus
                .iter()
                .map(|vcpu| {
                    format!(
                        "{}:{}",
                        vcpu["index"],
                        vcpu["power"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("vcpus:        {}", vcpus.join(" "));
    println!("memory:       {} MiB", text("memory_mib"));
    println!(
        "uptime:       {:.1} s",
        info["uptime_s"].as_f64().unwrap_or_default()
    );
    println!("boots:        {}", text("boots"));
    println!("suspends:     {}", text("suspend_count"));
    println!("last wake:    {}", text("last_wake_source"));
    println!("last suspend: {} us", text("last_suspend_latency_us"));
    println!("last resume:  {} us", text("last_resume_latency_us"));
    println!("psci:         {}", text("psci_version"));
    println!(
        "cpu power:    kept by {} ({} vCPU kicks)",
        text("cpu_power"),
        text("vcpu_kicks")
    );
    for device in info["devices"].as_array().into_iter().flatten() {
        let kind = device["kind"].as_str().unwrap_or("?");
        let what = match (device["id"].as_str(), device["path"].as_str()) {
            (Some(id), Some(path)) => {
                let mode = if device["readonly"] == true {
                    "ro"
                } else {
                    "rw"
                };
                format!("{id} {path} {mode}, ")
            }
            _ => String::new(),
        };
        println!(
            "device:       {kind} at {:#x} ({what}features {:#x}, {} requests, {} errors, {} resets)",
            device["mmio_base"].as_u64().unwrap_or_default(),
            device["features"].as_u64().unwrap_or_default(),
            device["requests"],
            device["errors"],
            device["resets"],
        );
    }
}
