//! A PostgreSQL cluster of the suite's own (initdb in a temporary directory, its own port), so restarting it disturbs
//! nothing else on the machine.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// A private cluster, stopped and removed when dropped.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

/// The directory of PostgreSQL's server programs, if they are installed (Debian keeps them out of `PATH`).
fn server_programs() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    versions.sort();
    versions.into_iter().rev().map(|v| v.join("bin")).find(|b| b.join("initdb").exists())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    /// Creates and starts a cluster; an error says why one cannot run here.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = server_programs().context("PostgreSQL's server programs (initdb, pg_ctl) are not installed")?;
        // PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
        let as_postgres = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?) == 0;
        let dir = std::env::temp_dir().join(format!("deploy-chaos-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let cluster = Self { bin, dir, port: free_port()?, as_postgres };
        if as_postgres {
            cluster.run("chown", &["-R", "postgres", &cluster.dir.display().to_string()], false).await?;
        }
        let data = cluster.data().display().to_string();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"], true).await?;
        cluster.pg_ctl("start").await?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The URL of its `postgres` database.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn run(&self, program: &str, args: &[&str], server_program: bool) -> anyhow::Result<()> {
        let path = if server_program { self.bin.join(program) } else { PathBuf::from(program) };
        let mut cmd = if self.as_postgres && server_program {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).current_dir(&self.dir).output().await.with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    async fn pg_ctl(&self, action: &str) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-m", "fast", "-w", action], true).await
    }

    /// Restarts it (fast shutdown: every session is ended, as in a failover or an upgrade).
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl("restart").await
    }

    /// A database of this name, created empty.
    pub async fn database(&self, name: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args([&self.url(), "-qAtc", &format!("create database {name}")])
            .output()
            .await
            .context("running psql")?;
        if !out.status.success() {
            bail!("create database {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            std::process::Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd.arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
