//! Man pages and shell completions of both binaries, generated from their clap definitions
//! (`src/args.rs` here, `../wal-archive-cli/src/args.rs`) for the Debian package.
//!
//! They go to `assets/` in the profile's directory of the target directory
//! (`target/release/assets/` in a release build): the one place that both this build and
//! cargo-deb know, since `[package.metadata.deb]` can name build products only as
//! `target/release/...`, which cargo-deb maps to the profile it builds. So `cargo deb -p
//! wal-archive-server` builds the binaries and these files in one step, and a page never
//! describes other flags than the binary beside it parses.
//!
//! - `man/NAME.1.gz`: a page per command and per visible subcommand (`wal-archive-push.1.gz`),
//!   compressed as Debian policy asks (cargo-deb compresses only files it did not build);
//! - `completions/bash/NAME`, `completions/zsh/_NAME`, `completions/fish/NAME.fish`.

use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

// Only the definitions count here; the binaries use the rest of these modules.
#[allow(dead_code)]
#[path = "src/args.rs"]
mod server_args;

#[allow(dead_code)]
#[path = "../wal-archive-cli/src/args.rs"]
mod cli_args;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/args.rs");
    println!("cargo::rerun-if-changed=../wal-archive-cli/src/args.rs");
    let Some(profile_dir) = profile_dir()? else {
        return Ok(());
    };
    // Made anew, so that a page of a removed subcommand is not packaged.
    let assets = profile_dir.join("assets");
    if assets.exists() {
        std::fs::remove_dir_all(&assets)
            .map_err(|e| format!("removing {}: {e}", assets.display()))?;
    }
    for cmd in [server_args::Args::command(), cli_args::Cli::command()] {
        let name = cmd.get_name().to_string();
        man_pages(cmd.clone(), &assets.join("man"))?;
        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            write(&assets.join("completions").join(file), &script)?;
        }
    }
    Ok(())
}

/// `<target>/<profile>`, from `OUT_DIR` = `<target>/<profile>/build/<package>-<hash>/out`;
/// `None`, with a warning, when cargo lays its directories out otherwise.
fn profile_dir() -> Result<Option<PathBuf>, Box<dyn Error>> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let build = out.ancestors().nth(2);
    match build.and_then(|b| Some((b.file_name()?, b.parent()?))) {
        Some((name, profile)) if name == "build" => Ok(Some(profile.to_path_buf())),
        _ => {
            println!(
                "cargo::warning=OUT_DIR {} is not inside <target>/<profile>/build/: man pages \
                 and completions for the Debian package are not generated",
                out.display()
            );
            Ok(None)
        }
    }
}

/// A gzipped page for `cmd` and for each of its visible subcommands, as `clap_mangen` writes
/// them (`wal-archive-push.1` for `wal-archive push`).
fn man_pages(cmd: clap::Command, dir: &Path) -> Result<(), Box<dyn Error>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pending = vec![cmd];
    while let Some(cmd) = pending.pop() {
        pending.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        // The package and its version, not the subcommand's name, in every page's footer.
        let page = clap_mangen::Man::new(cmd)
            .source(concat!("wal-archive ", env!("CARGO_PKG_VERSION")))
            .manual("wal-archive");
        let mut roff = Vec::new();
        page.render(&mut roff)?;
        // No file name or time in the header: the same page gives the same bytes.
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        gz.write_all(&roff)?;
        write(
            &dir.join(format!("{}.gz", page.get_filename())),
            &gz.finish()?,
        )?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Box<dyn Error>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()).into())
}
