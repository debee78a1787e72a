//! `--download`: fetch the agent package the organisation offers and unpack it while it
//! streams in: no temporary copy of the archive, and no entry may land outside the agent
//! directory (`..`, absolute paths, links pointing out are refused, not skipped).

use std::{
    io::Read,
    path::{Component, Path},
};

use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::stays_inside;
use crate::{
    ado::{AdoClient, OrgUrl},
    error::{Error, Result},
};

/// The agent package for this machine: the image is built for both architectures.
pub fn platform() -> Result<&'static str> {
    platform_for(std::env::consts::ARCH)
}

fn platform_for(arch: &str) -> Result<&'static str> {
    match arch {
        "x86_64" => Ok("linux-x64"),
        "aarch64" => Ok("linux-arm64"),
        other => Err(Error::Agent(format!(
            "no Azure Pipelines agent package for this machine ({other}); bake the agent into the image"
        ))),
    }
}
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// Downloads and unpacks the newest released agent into `dir`; returns its version.
pub async fn install(
    ado: &AdoClient,
    http: &reqwest::Client,
    org: &OrgUrl,
    dir: &Path,
) -> Result<String> {
    let package = ado.agent_package(org, platform()?).await?;
    let version = format!(
        "{}.{}.{}",
        package.version.major, package.version.minor, package.version.patch
    );
    let url = url::Url::parse(&package.download_url)
        .map_err(|e| Error::Agent(format!("agent package downloadUrl is not a URL: {e}")))?;
    if !crate::ado::transport_allowed(&url) {
        return Err(Error::Agent(format!(
            "agent package downloadUrl must be https: {url}"
        )));
    }
    tracing::info!(%version, %url, "downloading agent");
    // No Authorization header: the package comes from a CDN, the token is for ADO only.
    // The shared client's 20 s limit is for API calls; a ~100 MB package may take longer.
    let response = http
        .get(url.clone())
        .timeout(DOWNLOAD_TIMEOUT)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| Error::Transport {
            org: url.to_string(),
            reason: crate::ado::describe_transport_error(&e),
        })?;
    let stream = response.bytes_stream().map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let target = dir.to_owned();
    let entries = tokio::task::spawn_blocking(move || extract(reader, &target))
        .await
        .map_err(|e| Error::Agent(format!("unpacking the agent: {e}")))??;
    tracing::info!(entries, dir = %dir.display(), "agent unpacked");
    Ok(version)
}

/// Unpacks a `.tar.gz` into `dir`, refusing any entry that would escape it.
pub fn extract(reader: impl Read, dir: &Path) -> Result<usize> {
    let fail = |what: String| Error::Agent(format!("agent package: {what}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let mut count = 0;
    for entry in archive.entries().map_err(|e| fail(e.to_string()))? {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        let path = entry.path().map_err(|e| fail(e.to_string()))?.into_owned();
        if !stays_inside(&path) {
            return Err(fail(format!(
                "entry {} escapes the agent directory; refusing the package",
                path.display()
            )));
        }
        if let Some(target) = entry.link_name().map_err(|e| fail(e.to_string()))? {
            let base = if entry.header().entry_type().is_hard_link() {
                Path::new("")
            } else {
                path.parent().unwrap_or(Path::new(""))
            };
            if !resolves_inside(&base.join(&target)) {
                return Err(fail(format!(
                    "link {} -> {} points outside the agent directory; refusing the package",
                    path.display(),
                    target.display()
                )));
            }
        }
        let unpacked = entry
            .unpack_in(dir)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        if !unpacked {
            return Err(fail(format!(
                "entry {} was refused by the unpacker",
                path.display()
            )));
        }
        count += 1;
    }
    Ok(count)
}

/// Lexically resolves `..` and tells whether the path stays below its root.
fn resolves_inside(path: &Path) -> bool {
    let mut depth: i32 = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Builds a `.tar.gz` in memory: `(path, content, mode)`. Used by the simulated organisation.
pub fn package(files: &[(&str, &str, u32)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (path, content, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .expect("in-memory tar append");
    }
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("in-memory gzip")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_follows_the_machine() {
        let here = if cfg!(target_arch = "aarch64") {
            "linux-arm64"
        } else {
            "linux-x64"
        };
        assert_eq!(platform().unwrap(), here);
        assert_eq!(platform_for("x86_64").unwrap(), "linux-x64");
        assert_eq!(platform_for("aarch64").unwrap(), "linux-arm64");
        let err = platform_for("riscv64").unwrap_err().to_string();
        assert!(err.contains("riscv64") && err.contains("bake"), "{err}");
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ado-scaler-extract-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A raw tar entry with any name, bypassing the builder's own path checks.
    fn raw_entry(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(if kind == tar::EntryType::Regular {
            4
        } else {
            0
        });
        header.set_mode(0o644);
        header.set_cksum();
        let mut data = header.as_bytes().to_vec();
        if kind == tar::EntryType::Regular {
            let mut block = vec![0u8; 512];
            block[..4].copy_from_slice(b"evil");
            data.extend(block);
        }
        data.extend(vec![0u8; 1024]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn unpacks_files_with_their_modes() {
        let dir = temp_dir("ok");
        let bytes = package(&[
            ("config.sh", "#!/bin/sh\n", 0o755),
            ("bin/Agent.Listener", "x", 0o755),
            ("README", "r", 0o644),
        ]);
        assert_eq!(extract(bytes.as_slice(), &dir).unwrap(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("config.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(dir.join("bin/Agent.Listener")).unwrap(),
            "x"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_entries_that_escape() {
        for (tag, bytes) in [
            (
                "dotdot",
                raw_entry("../escaped", tar::EntryType::Regular, None),
            ),
            (
                "absolute",
                raw_entry("/tmp/ado-scaler-escaped", tar::EntryType::Regular, None),
            ),
            (
                "symlink",
                raw_entry(
                    "bin/link",
                    tar::EntryType::Symlink,
                    Some("../../etc/passwd"),
                ),
            ),
            (
                "abs-symlink",
                raw_entry("bin/link", tar::EntryType::Symlink, Some("/etc/passwd")),
            ),
            (
                "hardlink",
                raw_entry("bin/hard", tar::EntryType::Link, Some("../secret")),
            ),
        ] {
            let root = temp_dir(tag);
            let dir = root.join("agent");
            let err = extract(bytes.as_slice(), &dir).unwrap_err().to_string();
            assert!(err.contains("refusing the package"), "{tag}: {err}");
            assert!(!root.join("escaped").exists());
            std::fs::remove_dir_all(root).unwrap();
        }
        assert!(resolves_inside(Path::new("bin/../lib/x")));
        assert!(!resolves_inside(Path::new("bin/../../x")));
    }
}
