//! Pulling from a registry with `oci-client`: the client's configuration (TLS roots, plain http for loopback only,
//! credentials from a Docker `config.json`), its errors mapped onto ours, and layer blobs streamed into the
//! blocking unpacker.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::mpsc;

use crate::digest::Digest;
use crate::error::Error;
use crate::layer::{self, Layer};
use crate::reference::{DEFAULT_REGISTRY, RegistryRef};
use crate::unpack::{Budget, Whiteouts};

/// How to reach registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// A Docker `config.json` whose `auths` hold basic credentials per registry; anonymous without one.
    pub auth_file: Option<PathBuf>,
    /// PEM certificates trusted in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Whether loopback registries (`localhost`, 127.0.0.0/8, `::1`) are spoken to over plain http. Every other
    /// registry is https only.
    pub plain_http_for_loopback: bool,
    pub connect_timeout: Duration,
    /// How long a read may wait for bytes: a registry that stops sending fails the pull instead of hanging it.
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    fn default() -> RegistryOptions {
        RegistryOptions {
            auth_file: None,
            ca_file: None,
            plain_http_for_loopback: true,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// One image on one registry, with a client configured for it.
pub(crate) struct RegistrySource {
    reference: Reference,
    name: String,
    client: Client,
    auth: RegistryAuth,
}

impl RegistrySource {
    pub(crate) fn new(image: &RegistryRef, options: &RegistryOptions) -> Result<RegistrySource, Error> {
        let name = image.to_string();
        let reference = match &image.digest {
            Some(digest) => {
                Reference::with_digest(image.registry.clone(), image.repository.clone(), digest.to_string())
            }
            None => Reference::with_tag(
                image.registry.clone(),
                image.repository.clone(),
                image.tag_or_default().to_owned(),
            ),
        };
        let protocol = if image.is_loopback() && options.plain_http_for_loopback {
            ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_owned()])
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = match &options.ca_file {
            Some(path) => vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(path).map_err(Error::io(&name, "read the CA file", path))?,
            }],
            None => Vec::new(),
        };
        // reqwest is built without a crypto provider of its own, to share ring with the rest of the workspace; a
        // provider installed earlier by the process is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol,
            extra_root_certificates,
            platform_resolver: Some(Box::new(linux_amd64_resolver)),
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|err| Error::Registry {
            reference: name.clone(),
            detail: format!("cannot set up the client: {}", chain(&err)),
        })?;
        let auth = match &options.auth_file {
            Some(path) => {
                let json = std::fs::read(path).map_err(Error::io(&name, "read the credentials file", path))?;
                credentials_for(&json, &image.registry).map_err(|detail| Error::Credentials {
                    reference: name.clone(),
                    path: path.clone(),
                    detail,
                })?
            }
            None => RegistryAuth::Anonymous,
        };
        Ok(RegistrySource {
            reference,
            name,
            client,
            auth,
        })
    }

    /// The image manifest (linux/amd64 when the reference names an index) and its digest.
    pub(crate) async fn resolve(&self) -> Result<(Digest, OciImageManifest), Error> {
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&self.reference, &self.auth)
            .await
            .map_err(|err| client_error(&self.name, err))?;
        let digest = digest.parse::<Digest>().map_err(|_| Error::InvalidImage {
            reference: self.name.clone(),
            detail: format!("the registry gave the manifest digest {digest:?}, not a sha256 digest"),
        })?;
        Ok((digest, manifest))
    }

    /// Streams a layer into the unpacker (a blocking task) and returns how many bytes came.
    pub(crate) async fn apply_layer(
        &self,
        layer: &Layer,
        target: &Path,
        budget: Budget,
    ) -> Result<(u64, Budget), Error> {
        // The client remembers credentials per registry and uses them (as basic auth, or to fetch a bearer token
        // when the registry asks for one) on every request; a blob request alone does not pass them.
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        let blob = self
            .client
            .pull_blob_stream(&self.reference, &layer.descriptor())
            .await
            .map_err(|err| client_error(&self.name, err))?;
        // A few chunks in flight: the download and the disk writes overlap without buffering much.
        let (sender, receiver) = mpsc::channel::<Bytes>(8);
        let (consumer_layer, target) = (layer.clone(), target.to_owned());
        let consumer = tokio::task::spawn_blocking(move || {
            let mut budget = budget;
            let reader = ChannelReader {
                receiver,
                chunk: Bytes::new(),
            };
            layer::apply(reader, &consumer_layer, &target, &mut budget, Whiteouts::Apply).map(|size| (size, budget))
        });
        let mut stream = blob.stream;
        let mut lost = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if sender.send(bytes).await.is_err() {
                        // The unpacker has stopped reading; it reports why.
                        break;
                    }
                }
                Err(err) => {
                    // The client checks digests too; its verdict is left to ours, which also checks the size.
                    if !is_digest_error(&err) {
                        lost = Some(err);
                    }
                    break;
                }
            }
        }
        drop(sender);
        let result = consumer
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
        match (result, lost) {
            (Ok(done), _) => Ok(done),
            // The stream ended early, which the unpacker saw as a short blob: the cause is the connection.
            (Err(_), Some(err)) => Err(Error::ConnectionLost {
                reference: self.name.clone(),
                digest: layer.digest.clone(),
                detail: chain(&err),
            }),
            (Err(failure), None) => Err(failure.into_error(&self.name, &layer.digest)),
        }
    }
}

fn is_digest_error(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
}

/// Feeds the blocking unpacker from the download task.
struct ChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// An error and its causes on one line: reqwest hides the useful part ("connection refused") in its sources.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Sorts the client's errors into the reasons a VM status can show.
pub(crate) fn client_error(reference: &str, err: OciDistributionError) -> Error {
    let reference = reference.to_owned();
    match err {
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>();
            let message = message.join("; ");
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            });
            let refused = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::Unauthorized | OciErrorCode::Denied | OciErrorCode::Toomanyrequests
                )
            });
            if not_found {
                Error::NotFound {
                    reference,
                    detail: message,
                }
            } else if refused {
                Error::Refused { reference, message }
            } else {
                Error::Registry {
                    reference,
                    detail: message,
                }
            }
        }
        // The client drops the body of a 401; the status is all there is to say.
        OciDistributionError::UnauthorizedError { url } => Error::Refused {
            reference,
            message: format!("401 Unauthorized for {url}"),
        },
        OciDistributionError::AuthenticationFailure(message) => Error::Refused { reference, message },
        OciDistributionError::ServerError { code, message, url } => {
            let message = format!("{code} for {url}: {}", message.trim());
            match code {
                404 => Error::NotFound {
                    reference,
                    detail: message,
                },
                401 | 403 | 429 => Error::Refused { reference, message },
                502..=504 => Error::Unreachable {
                    reference,
                    detail: message,
                },
                _ => Error::Registry {
                    reference,
                    detail: message,
                },
            }
        }
        OciDistributionError::ImageManifestNotFoundError(detail) => Error::NotFound { reference, detail },
        OciDistributionError::UnsupportedMediaTypeError(media_type)
        | OciDistributionError::IncompatibleLayerMediaTypeError(media_type) => Error::InvalidImage {
            reference,
            detail: format!("unsupported manifest media type {media_type}"),
        },
        OciDistributionError::RequestError(err) => Error::Unreachable {
            reference,
            detail: chain(&err),
        },
        OciDistributionError::IoError(err) => Error::Unreachable {
            reference,
            detail: chain(&err),
        },
        OciDistributionError::DigestError(err) => Error::InvalidImage {
            reference,
            detail: format!("the manifest does not match its digest: {err}"),
        },
        other => Error::Registry {
            reference,
            detail: chain(&other),
        },
    }
}

/// The credentials a Docker `config.json` holds for `registry`: `auths.<registry>.auth` (base64 of `user:pass`),
/// or `username` and `password`. Keys may carry a scheme and a path (`https://index.docker.io/v1/`), as
/// `docker login` writes them. No entry means anonymous.
pub(crate) fn credentials_for(json: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    #[derive(serde::Deserialize)]
    struct ConfigFile {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        registrytoken: Option<String>,
    }
    let file: ConfigFile = serde_json::from_slice(json).map_err(|err| format!("not a Docker config.json: {err}"))?;
    let wanted = canonical_host(registry);
    let Some((_, entry)) = file.auths.iter().find(|(key, _)| canonical_host(key) == wanted) else {
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("the auth of {registry} is not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not text"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| format!("the auth of {registry} is not user:password"))?;
        return Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    if let Some(token) = &entry.registrytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    Ok(RegistryAuth::Anonymous)
}

/// `https://index.docker.io/v1/` and `docker.io` are one registry.
fn canonical_host(key: &str) -> &str {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DEFAULT_REGISTRY,
        host => host,
    }
}
