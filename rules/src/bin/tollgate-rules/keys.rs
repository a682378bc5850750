//! The key commands: `keygen` writes a signing key pair, `sign` signs an unsigned bundle.

use std::path::Path;

use tollgate_rules::bundle::{self, SigningKey, TrustedKeys};

use crate::failure::{Failure, Outcome};
use crate::files::{read_bundle, read_key_text, write};
use crate::out::outln;

pub(crate) fn keygen(key_id: &str, dir: &Path) -> Outcome {
    if !bundle::is_valid_key_id(key_id) {
        return Err(Failure::Usage(format!(
            "key id `{key_id}` is not 1-{} characters of A-Z a-z 0-9 . _ -",
            bundle::KEY_ID_CHARS_MAX
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", dir.display())))?;
    let key = SigningKey::generate(key_id);
    let secret_path = dir.join(format!("{key_id}.key"));
    let public_path = dir.join(format!("{key_id}.pub"));
    write_new_secret(&secret_path, key.to_file_string().as_bytes())?;
    let public = key.public();
    write(&public_path, public.to_file_string().as_bytes())?;
    outln!("wrote {} (secret, mode 0600)", secret_path.display());
    outln!("wrote {}", public_path.display());
    outln!("trusted-key list entry: {}:{}", public.key_id, public.hex());
    Ok(())
}

/// Creates the file with mode 0600 (on Unix) and refuses to overwrite an existing key.
fn write_new_secret(path: &Path, bytes: &[u8]) -> Outcome {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| Failure::Usage(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))
}

pub(crate) fn sign(unsigned_path: &Path, key_path: &Path, output: &Path) -> Outcome {
    let key = SigningKey::from_file_string(&read_key_text(key_path)?)
        .map_err(|e| Failure::Usage(format!("{}: {e}", key_path.display())))?;
    let bytes = read_bundle(unsigned_path)?;
    // Sign only what is whole: parts and program checked against the manifest first.
    bundle::inspect(&bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", unsigned_path.display())))?;
    let unsigned = bundle::UnsignedBundle::decode(&bytes)
        .map_err(|e| Failure::Failed(format!("{}: {e}", unsigned_path.display())))?;
    let signed = unsigned.sign(&key);
    let verified = bundle::verify(&signed, &TrustedKeys::new(vec![key.public()]))
        .map_err(|e| Failure::Failed(format!("the signed bundle does not verify: {e}")))?;
    write(output, &signed)?;
    outln!(
        "wrote {} (version {}, signed by `{}`, sha256 {})",
        output.display(),
        verified.manifest.bundle_version,
        key.key_id,
        verified.sha256
    );
    Ok(())
}
