//! The agent's OAuth client assertion (REALITY.md: `OAuthCredential.cs`): an RS256 JWT with
//! `iss` = `sub` = the registration's client id, `aud` = its authorization URL, `nbf`, `exp`
//! at most five minutes later and a `jti`, signed with the key in `.credentials_rsaparams`.
//! The simulated listener signs one from the files it finds; the simulated token endpoint
//! verifies it against the public key the registration carried. Written from the format,
//! not from our production types, so that a field we name wrongly fails here.

use base64::Engine as _;
use serde_json::{Value, json};

const URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The longest an assertion may live, as the real agent makes them.
pub const MAX_LIFETIME_SECS: i64 = 5 * 60;

/// The eight members `.credentials_rsaparams` must have, each base64 of big-endian bytes.
pub const RSA_MEMBERS: [&str; 8] = ["d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"];

/// Signs an assertion with the key in `rsaparams` (the file's JSON).
pub fn sign_assertion(
    rsaparams: &Value,
    client_id: &str,
    audience: &str,
    now: i64,
) -> Result<String, String> {
    let member = |name: &str| -> Result<Vec<u8>, String> {
        let text = rsaparams[name]
            .as_str()
            .ok_or_else(|| format!(".credentials_rsaparams: no member {name:?}"))?;
        STD.decode(text)
            .map_err(|e| format!(".credentials_rsaparams: {name}: {e}"))
    };
    let [d, dp, dq, e, qinv, n, p, q] = RSA_MEMBERS.map(member);
    let (d, dp, dq, e, qinv, n, p, q) = (d?, dp?, dq?, e?, qinv?, n?, p?, q?);
    fn uint(bytes: &[u8]) -> Result<pkcs1::UintRef<'_>, String> {
        pkcs1::UintRef::new(bytes).map_err(|e| format!(".credentials_rsaparams: {e}"))
    }
    let key = pkcs1::RsaPrivateKey {
        modulus: uint(&n)?,
        public_exponent: uint(&e)?,
        private_exponent: uint(&d)?,
        prime1: uint(&p)?,
        prime2: uint(&q)?,
        exponent1: uint(&dp)?,
        exponent2: uint(&dq)?,
        coefficient: uint(&qinv)?,
        other_prime_infos: None,
    };
    let der = pkcs1::der::Encode::to_der(&key).map_err(|e| e.to_string())?;
    let pair = aws_lc_rs::rsa::KeyPair::from_der(&der)
        .map_err(|e| format!(".credentials_rsaparams: not an RSA key: {e}"))?;
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "nbf": now,
        "iat": now,
        "exp": now + MAX_LIFETIME_SECS,
        "jti": format!("{:032x}", rand::random::<u128>()),
    });
    let signing_input = format!(
        "{}.{}",
        URL.encode(header.to_string()),
        URL.encode(claims.to_string())
    );
    let mut signature = vec![0; pair.public_modulus_len()];
    pair.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing failed".to_owned())?;
    Ok(format!("{signing_input}.{}", URL.encode(signature)))
}

/// Checks an assertion's signature against a registered public key (base64 members, as the
/// registration carried them); returns its header and claims.
pub fn verify(
    assertion: &str,
    modulus_b64: &str,
    exponent_b64: &str,
) -> Result<(Value, Value), String> {
    let mut parts = assertion.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (three dot-separated parts)".into());
    };
    let decode = |part: &str| URL.decode(part).map_err(|e| format!("JWT base64url: {e}"));
    let n = STD.decode(modulus_b64).map_err(|e| e.to_string())?;
    let e = STD.decode(exponent_b64).map_err(|e| e.to_string())?;
    aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            format!("{header}.{claims}").as_bytes(),
            &decode(signature)?,
        )
        .map_err(|_| "the signature does not verify with the registered key".to_owned())?;
    let json = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string());
    Ok((json(decode(header)?)?, json(decode(claims)?)?))
}
