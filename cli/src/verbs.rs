//! Each verb, the same for both modes: the mode only says how to read and change a VM and how to reach it
//! ([`Target`]).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::CommandFactory;
use tokio::net::TcpListener;
use vmlet_api::VirtualMachine;
use vmlet_control::{Command, Phase, Status};

use crate::args::{Cli, ScpArgs, Shell, SshArgs, SshOptions, Verb};
use crate::cluster::Cluster;
use crate::run_strategy::{self, Change, Plan};
use crate::standalone::{self, Machine};
use crate::{Endpoint, Error, Result, Stream, Target, control, streams, table};

/// How long `restart` of a Manual VM waits for it to stop before asking it to start.
const STOP_WAIT: Duration = Duration::from_secs(180);

impl Target {
    pub async fn from_cli(cli: &Cli) -> Result<Target> {
        if cli.manifests.is_some() || cli.state_dir.is_some() {
            let machine = Machine::locate(cli.manifests.clone(), cli.state_dir.clone(), cli.namespace.clone())?;
            return Ok(Target::Standalone(machine));
        }
        Ok(Target::Cluster(
            Cluster::connect(cli.context.clone(), cli.namespace.clone()).await?,
        ))
    }

    fn namespace(&self) -> &str {
        match self {
            Target::Standalone(machine) => &machine.namespace,
            Target::Cluster(cluster) => &cluster.namespace,
        }
    }

    pub async fn vm(&self, name: &str) -> Result<VirtualMachine> {
        match self {
            Target::Standalone(machine) => machine.vm(name).await,
            Target::Cluster(cluster) => cluster.vm(name).await,
        }
    }

    pub async fn list(&self, all_namespaces: bool) -> Result<Vec<VirtualMachine>> {
        match self {
            Target::Standalone(machine) => machine.list(all_namespaces).await,
            Target::Cluster(cluster) => cluster.list(all_namespaces).await,
        }
    }

    pub async fn change(&self, name: &str, change: Change) -> Result<()> {
        match self {
            Target::Standalone(machine) => machine.change(name, change).await,
            Target::Cluster(cluster) => cluster.change(name, change).await,
        }
    }

    pub async fn open(&self, vm: &VirtualMachine, endpoint: Endpoint) -> Result<Stream> {
        match self {
            Target::Standalone(machine) => machine.open(vm, endpoint).await,
            Target::Cluster(cluster) => cluster.open(vm, endpoint).await,
        }
    }

    /// One command to the VM's launcher.
    pub async fn control(&self, vm: &VirtualMachine, command: Command) -> Result<Status> {
        control::send(self.open(vm, Endpoint::Control).await?, command).await
    }
}

/// Runs the command line; the exit code is the program's (ssh's and scp's own).
pub async fn run(cli: Cli) -> Result<u8> {
    match &cli.verb {
        Verb::Completion { shell } => {
            completion(*shell, &mut std::io::stdout())?;
            return Ok(0);
        }
        Verb::Validate {
            files,
            output,
            default_network_binding,
        } => return validate(files, output.as_deref(), default_network_binding.as_deref()),
        _ => {}
    }
    let target = Target::from_cli(&cli).await?;
    run_on(target, cli.verb).await
}

/// Runs one verb on `target`.
pub async fn run_on(target: Target, verb: Verb) -> Result<u8> {
    match verb {
        Verb::Start { vm } => lifecycle(&target, run_strategy::Verb::Start, &vm, None, false).await?,
        Verb::Stop {
            vm,
            grace_period,
            force,
        } => lifecycle(&target, run_strategy::Verb::Stop, &vm, grace_period, force).await?,
        Verb::Restart { vm } => lifecycle(&target, run_strategy::Verb::Restart, &vm, None, false).await?,
        Verb::Pause { vm } => {
            let status = target.control(&target.vm(&vm).await?, Command::Pause).await?;
            println!("{vm}: {}", phase(&status));
        }
        Verb::Unpause { vm } => {
            let status = target.control(&target.vm(&vm).await?, Command::Resume).await?;
            println!("{vm}: {}", phase(&status));
        }
        Verb::Console { vm } => streams::console(&target, &vm).await?,
        Verb::Vnc { vm, proxy_only, port } => vnc(target, vm, proxy_only, port).await?,
        Verb::Ssh(args) => return ssh(&target, &args).await,
        Verb::Scp(args) => return scp(&target, &args).await,
        Verb::PortForward {
            vm,
            ports,
            stdio,
            address,
        } => port_forward(target, vm, &ports, stdio, &address).await?,
        Verb::List { output, all_namespaces } => {
            let vms = target.list(all_namespaces).await?;
            print!(
                "{}",
                table::render(&vms, output, all_namespaces, jiff::Timestamp::now())
            );
        }
        Verb::Status { vm, output } => {
            let vm = target.vm(&vm).await?;
            print!("{}", table::render(&[vm], output, false, jiff::Timestamp::now()));
        }
        Verb::Logs { vm, follow } => logs(&target, &vm, follow).await?,
        Verb::Completion { .. } | Verb::Validate { .. } => unreachable!("answered above"),
    }
    Ok(0)
}

fn phase(status: &Status) -> &'static str {
    match status.phase {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::ShuttingDown => "shutting down",
        Phase::Stopped => "stopped",
        Phase::Failed => "failed",
    }
}

/// `vmlet validate`: hands the files to `vmlet-handler validate`, the one home of the check, so that the command,
/// standalone mode and the controller can never disagree about a manifest. `vmlet-handler` is looked for beside
/// `vmlet` first (the two ship together), then on `PATH`.
fn validate(files: &[std::path::PathBuf], output: Option<&str>, binding: Option<&str>) -> Result<u8> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("vmlet-handler"))
        .filter(|handler| handler.is_file());
    let program = beside.unwrap_or_else(|| "vmlet-handler".into());
    let mut command = std::process::Command::new(&program);
    command.arg("validate");
    if let Some(output) = output {
        command.args(["--output", output]);
    }
    if let Some(binding) = binding {
        command.args(["--default-network-binding", binding]);
    }
    command.arg("--").args(files);
    let status = command.status().map_err(|source| Error::Spawn {
        program: format!("{} (vmlet validate runs vmlet-handler validate)", program.display()),
        source,
    })?;
    // A signal has no exit code of its own: report it as a failure like any other.
    Ok(status.code().and_then(|code| u8::try_from(code).ok()).unwrap_or(1))
}

/// Writes the completion script for `shell`, made from the same definitions as the command line.
pub fn completion(shell: Shell, out: &mut dyn Write) -> Result<()> {
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
    };
    clap_complete::generate(generator, &mut Cli::command(), "vmlet", out);
    Ok(())
}

async fn lifecycle(
    target: &Target,
    verb: run_strategy::Verb,
    name: &str,
    grace_period: Option<u64>,
    force: bool,
) -> Result<()> {
    let vm = target.vm(name).await?;
    let running = run_strategy::runs(vm.status.as_ref());
    match run_strategy::plan_for(verb, &vm.spec, running) {
        Plan::Change(change) => {
            target.change(name, change).await?;
            match change {
                Change::Strategy(strategy) => println!("{name}: runStrategy {}", strategy.as_str()),
                Change::Running(running) => println!("{name}: running {running}"),
                Change::Request(request) => println!("{name}: asked to {request}"),
            }
            if running && (force || grace_period.is_some()) {
                end_now(target, &vm, if force { Some(0) } else { grace_period }).await?;
            }
        }
        Plan::EndRun { kill } => {
            target
                .control(&vm, if kill { Command::Kill } else { Command::Shutdown })
                .await?;
            println!("{name}: restarting");
        }
        Plan::StopThenStart => {
            target.change(name, Change::Request("stop")).await?;
            wait_stopped(target, name).await?;
            target.change(name, Change::Request("start")).await?;
            println!("{name}: restarting");
        }
        Plan::Refuse(why) => return Err(Error::Refused(format!("{name}: {why}"))),
    }
    Ok(())
}

/// Ends the guest sooner than its own grace period: a shutdown, then after `grace` seconds (at once for 0), kill.
async fn end_now(target: &Target, vm: &VirtualMachine, grace: Option<u64>) -> Result<()> {
    let grace = Duration::from_secs(grace.unwrap_or_default());
    if !grace.is_zero() {
        target.control(vm, Command::Shutdown).await?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match target.control(vm, Command::Status).await {
                Ok(status) if !matches!(status.phase, Phase::Stopped | Phase::Failed) => {}
                // Stopped, or the launcher is already gone.
                _ => return Ok(()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    match target.control(vm, Command::Kill).await {
        // A guest that stopped meanwhile has nothing left to kill.
        Ok(_) | Err(Error::NotRunning { .. } | Error::Launcher(_) | Error::Io(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

async fn wait_stopped(target: &Target, name: &str) -> Result<()> {
    let deadline = Instant::now() + STOP_WAIT;
    while Instant::now() < deadline {
        if !run_strategy::runs(target.vm(name).await?.status.as_ref()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(Error::Timeout {
        what: format!("{name}'s stop"),
        secs: STOP_WAIT.as_secs(),
    })
}

async fn vnc(target: Target, name: String, proxy_only: bool, port: u16) -> Result<()> {
    // Fails now, not at the first connection, for a VM that does not exist or does not run.
    let vm = target.vm(&name).await?;
    drop(target.open(&vm, Endpoint::Vnc).await?);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    if proxy_only {
        println!("{}", serde_json::json!({"port": port}));
    } else {
        println!("{name}'s screen: vnc://127.0.0.1:{port} (display 127.0.0.1::{port}); Ctrl-C stops");
    }
    std::io::stdout().flush()?;
    streams::serve(Arc::new(target), name, Endpoint::Vnc, listener).await
}

/// `LOCAL:REMOTE` or `PORT`.
fn parse_ports(spec: &str) -> Option<(u16, u16)> {
    match spec.split_once(':') {
        Some((local, remote)) => Some((local.parse().ok()?, remote.parse().ok()?)),
        None => spec.parse().ok().map(|p| (p, p)),
    }
}

async fn port_forward(target: Target, name: String, ports: &[String], stdio: bool, address: &str) -> Result<()> {
    let ports: Vec<(u16, u16)> = ports
        .iter()
        .map(|p| parse_ports(p).ok_or_else(|| Error::Refused(format!("{p} is not PORT or LOCAL:REMOTE"))))
        .collect::<Result<_>>()?;
    if stdio {
        let [(_, remote)] = ports[..] else {
            return Err(Error::Refused("--stdio forwards exactly one port".into()));
        };
        return streams::stdio(&target, &name, Endpoint::Port(remote)).await;
    }
    target.vm(&name).await?;
    let target = Arc::new(target);
    let mut serving = tokio::task::JoinSet::new();
    for (local, remote) in ports {
        let listener = TcpListener::bind((address, local)).await?;
        println!("Forwarding from {} -> {remote}", listener.local_addr()?);
        serving.spawn(streams::serve(
            target.clone(),
            name.clone(),
            Endpoint::Port(remote),
            listener,
        ));
    }
    std::io::stdout().flush()?;
    while let Some(done) = serving.join_next().await {
        done.map_err(|e| Error::Io(std::io::Error::other(e)))??;
    }
    Ok(())
}

/// `[USER@]VM`.
fn split_destination(destination: &str) -> (Option<&str>, &str) {
    match destination.rsplit_once('@') {
        Some((user, vm)) => (Some(user), vm),
        None => (None, destination),
    }
}

/// Quotes a word for the shell that runs ssh's ProxyCommand.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The ssh options that reach `vm`, and the host name to give ssh.
fn route(target: &Target, vm: &VirtualMachine, options: &SshOptions) -> Result<(Vec<String>, String)> {
    let name = vm.metadata.name.clone().unwrap_or_default();
    let mut args = Vec::new();
    if let Some(key) = &options.identity_file {
        args.extend(["-i".to_owned(), key.display().to_string()]);
    }
    for option in &options.options {
        args.extend(["-o".to_owned(), option.clone()]);
    }
    // The VM's host key under its own name, not its address, which another VM may have later.
    args.extend([
        "-o".to_owned(),
        format!("HostKeyAlias=vmlet.{}.{name}", target.namespace()),
    ]);
    let host = match target {
        Target::Standalone(_) => standalone::ip(vm).ok_or_else(|| Error::NotRunning {
            name: name.clone(),
            status: table::printable(vm.status.as_ref()),
        })?,
        Target::Cluster(cluster) => {
            let program = std::env::current_exe().map_err(|source| Error::Spawn {
                program: "vmlet".into(),
                source,
            })?;
            let mut proxy = vec![shell_quote(&program.display().to_string())];
            if let Some(context) = &cluster.context {
                proxy.extend(["--context".to_owned(), shell_quote(context)]);
            }
            proxy.extend([
                "-n".to_owned(),
                shell_quote(&cluster.namespace),
                "port-forward".to_owned(),
                "--stdio".to_owned(),
                shell_quote(&name),
                "22".to_owned(),
            ]);
            args.extend(["-o".to_owned(), format!("ProxyCommand={}", proxy.join(" "))]);
            name
        }
    };
    Ok((args, host))
}

async fn ssh(target: &Target, args: &SshArgs) -> Result<u8> {
    let (user, name) = split_destination(&args.destination);
    let vm = target.vm(name).await?;
    let (options, host) = route(target, &vm, &args.ssh)?;
    let destination = match user {
        Some(user) => format!("{user}@{host}"),
        None => host,
    };
    let mut command = std::process::Command::new("ssh");
    command.args(options).arg(destination).args(&args.command);
    spawn(command, "ssh")
}

async fn scp(target: &Target, args: &ScpArgs) -> Result<u8> {
    let remote = |path: &str| {
        let (host, _) = path.split_once(':')?;
        (!host.contains('/')).then(|| split_destination(host).1.to_owned())
    };
    let names: Vec<String> = args.paths.iter().filter_map(|p| remote(p)).collect();
    let Some(name) = names.first() else {
        return Err(Error::Refused("name the VM's side as [USER@]VM:PATH".into()));
    };
    if names.iter().any(|n| n != name) {
        return Err(Error::Refused("scp copies to or from one VM at a time".into()));
    }
    let vm = target.vm(name).await?;
    let (options, host) = route(target, &vm, &args.ssh)?;
    let mut command = std::process::Command::new("scp");
    command.args(options);
    if args.recursive {
        command.arg("-r");
    }
    for path in &args.paths {
        match (remote(path), path.split_once(':')) {
            (Some(_), Some((destination, rest))) => {
                let user = split_destination(destination).0;
                command.arg(match user {
                    Some(user) => format!("{user}@{host}:{rest}"),
                    None => format!("{host}:{rest}"),
                });
            }
            _ => {
                command.arg(path);
            }
        }
    }
    spawn(command, "scp")
}

fn spawn(mut command: std::process::Command, program: &str) -> Result<u8> {
    let status = command.status().map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    Ok(status.code().map_or(255, |c| u8::try_from(c).unwrap_or(255)))
}

async fn logs(target: &Target, name: &str, follow: bool) -> Result<()> {
    match target {
        Target::Standalone(machine) => {
            machine.vm(name).await?;
            follow_file(&machine.log_file(name), follow).await
        }
        Target::Cluster(cluster) => {
            let vm = cluster.vm(name).await?;
            cluster.logs(&vm, follow, &mut std::io::stdout()).await
        }
    }
}

async fn follow_file(path: &Path, follow: bool) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await.map_err(|source| Error::File {
        path: path.to_owned(),
        source,
    })?;
    let mut stdout = std::io::stdout();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n > 0 {
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        } else if follow {
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_destinations_parse() {
        assert_eq!(parse_ports("8080:80"), Some((8080, 80)));
        assert_eq!(parse_ports("22"), Some((22, 22)));
        assert_eq!(parse_ports("x"), None);
        assert_eq!(split_destination("root@web"), (Some("root"), "web"));
        assert_eq!(split_destination("web"), (None, "web"));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
