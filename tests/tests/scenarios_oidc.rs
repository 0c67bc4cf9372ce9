//! OpenID Connect scenarios of the 3scale guides, end to end: an API whose applications become clients at the
//! identity provider (Keycloak's client registration, or zync's REST protocol), tokens from that provider through
//! the gateway, and the provider going away while applications change. Driven only through system's admin API,
//! the gateway and the IdP. With `KEYCLOAK_URL` set they run against that Keycloak (see docs/e2e.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use tests::oidc::{start_platform, IdpClient, OidcIdp};
use tests::scenario::eventually;
use tests::{Admin, IdpOptions, Platform};

/// How long anything that crosses services (outbox, zync queue, gateway config poll) may take on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// Access-token lifetime at the test IdP: short, so the expiry step waits only this long.
const TOKEN_TTL_SECS: u64 = 5;

/// Which management protocol zync speaks to the IdP (`oidc_issuer_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Keycloak,
    Rest,
}

impl Protocol {
    fn issuer_type(self) -> &'static str {
        match self {
            Protocol::Keycloak => "keycloak",
            Protocol::Rest => "rest",
        }
    }
}

/// An OIDC API set up through the admin API: a service pointing at the echo upstream, a plan and a developer
/// account to create applications in.
struct OidcApi {
    service_id: i64,
    plan_id: i64,
    account_id: i64,
    /// The staging host the gateway routes on.
    host: String,
    protocol: Protocol,
}

fn id_of(v: &Value, what: &str) -> i64 {
    v[what]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no {what}.id in {v}"))
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field} in {v}"))
}

impl OidcApi {
    async fn create(
        platform: &Platform,
        idp: &OidcIdp,
        name: &str,
        protocol: Protocol,
        client_id_claim: Option<&str>,
    ) -> Self {
        let admin = platform.admin();
        let service = admin
            .post(
                "/admin/api/services.json",
                &[
                    ("name", name),
                    ("system_name", name),
                    ("backend_version", "oidc"),
                ],
            )
            .await;
        let service_id = id_of(&service, "service");
        assert_eq!(service["service"]["backend_version"], "oidc");

        let host = format!("{name}-staging.example.com");
        let staging = format!("http://{host}");
        let production = format!("http://{name}-production.example.com");
        let issuer = idp.admin_issuer();
        let upstream = platform.echo.url("");
        let upstream = upstream.trim_end_matches('/');
        let mut proxy = vec![
            ("api_backend", upstream),
            ("sandbox_endpoint", staging.as_str()),
            ("endpoint", production.as_str()),
            ("oidc_issuer_endpoint", issuer.as_str()),
            ("oidc_issuer_type", protocol.issuer_type()),
        ];
        if let Some(claim) = client_id_claim {
            proxy.push(("jwt_claim_with_client_id", claim));
            proxy.push(("jwt_claim_with_client_id_type", "plain"));
        }
        let path = format!("/admin/api/services/{service_id}/proxy.json");
        let updated = admin.put(&path, &proxy).await;
        assert_eq!(updated["proxy"]["oidc_issuer_type"], protocol.issuer_type());

        // Service accounts = the client_credentials grant, which the scenarios get tokens with.
        let oidc = admin
            .put(
                &format!("/admin/api/services/{service_id}/proxy/oidc_configuration.json"),
                &[("service_accounts_enabled", "true")],
            )
            .await;
        assert_eq!(oidc["oidc_configuration"]["service_accounts_enabled"], true);

        let plan = admin
            .post(
                &format!("/admin/api/services/{service_id}/application_plans.json"),
                &[("name", "Basic")],
            )
            .await;
        let account = admin
            .post(
                "/admin/api/signup.json",
                &[
                    ("org_name", &format!("{name} developer")),
                    ("username", &format!("{name}-dev")),
                    ("email", &format!("{name}-dev@example.com")),
                    ("password", "secret-password-1"),
                ],
            )
            .await;
        Self {
            service_id,
            plan_id: id_of(&plan, "application_plan"),
            account_id: id_of(&account, "account"),
            host,
            protocol,
        }
    }

    fn app_path(&self, app: i64) -> String {
        format!(
            "/admin/api/accounts/{}/applications/{app}.json",
            self.account_id
        )
    }

    /// A state action (`suspend`, `resume`) of an application.
    fn action_path(&self, app: i64, action: &str) -> String {
        format!(
            "/admin/api/accounts/{}/applications/{app}/{action}.json",
            self.account_id
        )
    }

    /// Creates an application; returns its representation (with `client_id` and `client_secret`).
    async fn create_app(&self, admin: &Admin, name: &str, redirect_url: &str) -> Value {
        let plan = self.plan_id.to_string();
        let app = admin
            .post(
                &format!("/admin/api/accounts/{}/applications.json", self.account_id),
                &[
                    ("plan_id", plan.as_str()),
                    ("name", name),
                    ("redirect_url", redirect_url),
                ],
            )
            .await;
        let app = app["application"].clone();
        assert_eq!(app["client_id"], app["application_id"], "{app}");
        assert!(
            app["client_secret"].is_string(),
            "OIDC apps get a key: {app}"
        );
        app
    }

    /// A client as the IdP holds it, through the protocol zync writes it with.
    async fn idp_client(
        &self,
        idp: &OidcIdp,
        client_id: &str,
    ) -> Result<Option<IdpClient>, String> {
        let found = match self.protocol {
            Protocol::Keycloak => idp.keycloak_client(client_id).await,
            Protocol::Rest => idp.rest_client(client_id).await,
        };
        found.map_err(|e| format!("{e:#}"))
    }

    /// Waits until the IdP holds `client_id` in the state `expected` says.
    async fn wait_client(
        &self,
        idp: &OidcIdp,
        what: &str,
        client_id: &str,
        expected: impl Fn(&IdpClient) -> bool,
    ) -> IdpClient {
        eventually(what, DEADLINE, || async {
            match self.idp_client(idp, client_id).await? {
                Some(c) if expected(&c) => Ok(c),
                other => Err(format!("IdP holds {other:?}")),
            }
        })
        .await
    }

    async fn wait_client_gone(&self, idp: &OidcIdp, what: &str, client_id: &str) {
        eventually(what, DEADLINE, || async {
            match self.idp_client(idp, client_id).await? {
                None => Ok(()),
                Some(c) => Err(format!("IdP still holds {c:?}")),
            }
        })
        .await
    }

    /// One call through the (staging) gateway with `token` as a bearer token: status and the echoed request.
    async fn call(&self, platform: &Platform, token: &str) -> (StatusCode, Value) {
        let res = reqwest::Client::new()
            .get(platform.url("gateway", "/v1/greeting?who=oidc"))
            .header(reqwest::header::HOST, &self.host)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("gateway call: {e}"));
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits until a fresh token of the client passes the gateway; returns that token and what the upstream saw.
    async fn wait_passes(
        &self,
        platform: &Platform,
        idp: &OidcIdp,
        what: &str,
        client_id: &str,
        secret: &str,
    ) -> (String, Value) {
        eventually(what, DEADLINE, || async {
            let token = idp
                .client_credentials_token(client_id, secret)
                .await
                .map_err(|e| format!("{e:#}"))?;
            match self.call(platform, &token).await {
                (StatusCode::OK, echoed) => Ok((token, echoed)),
                (status, body) => Err(format!("gateway answered {status}: {body}")),
            }
        })
        .await
    }
}

/// The claims of a JWT, read without verification.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// The token with its payload changed (a week more of life) and the original signature kept.
fn tampered(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = claims(token);
    payload["exp"] = (payload["exp"].as_i64().expect("exp") + 7 * 24 * 3600).into();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&payload).expect("JSON"));
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Waits (polling the clock) until `token` is past its `exp`.
async fn wait_expired(token: &str) {
    let exp = claims(token)["exp"].as_i64().expect("exp");
    let deadline = Duration::from_secs(TOKEN_TTL_SECS + 30);
    eventually("the token expires", deadline, || async {
        if now_secs() > exp {
            Ok(())
        } else {
            Err(format!("now {} ≤ exp {exp}", now_secs()))
        }
    })
    .await;
}

/// The journey both protocols share: a new application becomes a client with the same id and secret; its
/// token passes the gateway, which forwards `Authorization`; tampered and expired tokens get 403; a new redirect
/// URL reaches the client; after key rotation new tokens pass; deleting the application deletes the client.
async fn journey(platform: &Platform, idp: &OidcIdp, api: &OidcApi) {
    let admin = platform.admin();
    let app = api
        .create_app(&admin, "Journey App", "http://journey.example.com/callback")
        .await;
    let app_id = app["id"].as_i64().expect("app id");
    let client_id = str_of(&app, "client_id").to_owned();
    let secret = str_of(&app, "client_secret").to_owned();

    let client = api
        .wait_client(idp, "the client appears at the IdP", &client_id, |c| {
            c.secret.as_deref() == Some(secret.as_str())
        })
        .await;
    assert_eq!(client.client_id, client_id);
    assert_eq!(
        client.redirect_uris,
        vec!["http://journey.example.com/callback".to_owned()]
    );
    assert!(client.enabled);

    let (token, echoed) = api
        .wait_passes(
            platform,
            idp,
            "a token passes the gateway",
            &client_id,
            &secret,
        )
        .await;
    assert_eq!(
        echoed["headers"]["authorization"],
        format!("Bearer {token}"),
        "the upstream sees the client's Authorization header: {echoed}"
    );
    assert_eq!(echoed["path"], "/v1/greeting");
    assert_eq!(echoed["args"]["who"], "oidc");

    // A forged payload with the original signature is refused.
    let (status, body) = api.call(platform, &tampered(&token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tampered token: {body}");
    let (status, _) = api.call(platform, "not-a-jwt").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "garbage token");

    // The token that passed is refused once past its exp, while the application still works.
    if !idp.skip_on_keycloak(
        "token expiry (the realm's access-token lifespan is not changed by the suite)",
    ) {
        wait_expired(&token).await;
        let (status, body) = api.call(platform, &token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "expired token: {body}");
        api.wait_passes(
            platform,
            idp,
            "a fresh token still passes",
            &client_id,
            &secret,
        )
        .await;
    }

    // A new redirect URL reaches the client.
    admin
        .put(
            &api.app_path(app_id),
            &[("redirect_url", "http://journey.example.com/other")],
        )
        .await;
    api.wait_client(
        idp,
        "the client gets the new redirect URL",
        &client_id,
        |c| c.redirect_uris == ["http://journey.example.com/other"],
    )
    .await;

    // After the IdP signs with a new key (the old one gone from its JWKS), new tokens still pass.
    if let Some(new_kid) = idp.rotate_keys().await.expect("key rotation") {
        assert_ne!(kid(&token).as_deref(), Some(new_kid.as_str()));
        let (rotated, _) = api
            .wait_passes(
                platform,
                idp,
                "a token signed with the new key passes",
                &client_id,
                &secret,
            )
            .await;
        assert_eq!(kid(&rotated), Some(new_kid));
    }

    // Keycloak type: the client secret is the application's key. Replacing the key (OIDC applications hold one)
    // removes the client while there is none and brings it back with the new secret.
    let secret = if api.protocol == Protocol::Keycloak {
        let keys = format!(
            "/admin/api/accounts/{}/applications/{app_id}/keys",
            api.account_id
        );
        admin.delete(&format!("{keys}/{secret}.json"), &[]).await;
        api.wait_client_gone(idp, "without a key the client is deleted", &client_id)
            .await;
        let new_secret = "replaced-secret-0001";
        admin
            .post(&format!("{keys}.json"), &[("key", new_secret)])
            .await;
        api.wait_client(
            idp,
            "the client returns with the new key",
            &client_id,
            |c| c.secret.as_deref() == Some(new_secret),
        )
        .await;
        assert!(
            idp.client_credentials_token(&client_id, &secret)
                .await
                .is_err(),
            "the old secret still gets tokens"
        );
        api.wait_passes(
            platform,
            idp,
            "a token of the new secret passes",
            &client_id,
            new_secret,
        )
        .await;
        new_secret.to_owned()
    } else {
        secret
    };

    // Deleting the application deletes the client: the IdP issues it no more tokens.
    admin.delete(&api.app_path(app_id), &[]).await;
    api.wait_client_gone(idp, "the client is deleted at the IdP", &client_id)
        .await;
    let refused = idp.client_credentials_token(&client_id, &secret).await;
    assert!(
        refused.is_err(),
        "a deleted client got a token: {refused:?}"
    );
}

fn idp_options() -> IdpOptions {
    IdpOptions {
        token_ttl_secs: TOKEN_TTL_SECS,
        ..IdpOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_keycloak_type_clients_follow_applications_and_tokens_pass_the_gateway() {
    let (platform, idp) = start_platform(idp_options()).await;
    let api = OidcApi::create(&platform, &idp, "kc-oidc", Protocol::Keycloak, None).await;
    journey(&platform, &idp, &api).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oidc_rest_type_with_a_custom_client_id_claim() {
    if tests::KeycloakSettings::from_env().is_some() {
        eprintln!("NOTE: skipped against a real Keycloak: it does not speak zync's REST protocol");
        return;
    }
    // Okta-shaped tokens, as in the Okta walk-through: no `azp`; the client id travels in `appid`, which the
    // service names as its client-id claim. A gateway reading `azp` would refuse every one of them.
    let (platform, idp) = start_platform(IdpOptions {
        azp: false,
        extra_claim: Some("appid".into()),
        ..idp_options()
    })
    .await;
    let api = OidcApi::create(&platform, &idp, "rest-oidc", Protocol::Rest, Some("appid")).await;
    let admin = platform.admin();

    let app = api
        .create_app(&admin, "Okta App", "http://okta.example.com/callback")
        .await;
    let app_id = app["id"].as_i64().expect("app id");
    let client_id = str_of(&app, "client_id").to_owned();
    let secret = str_of(&app, "client_secret").to_owned();
    api.wait_client(&idp, "the REST client appears", &client_id, |c| {
        c.secret.as_deref() == Some(secret.as_str())
    })
    .await;
    let (token, _) = api
        .wait_passes(
            &platform,
            &idp,
            "an appid token passes the gateway",
            &client_id,
            &secret,
        )
        .await;
    let token_claims = claims(&token);
    assert!(token_claims.get("azp").is_none(), "{token_claims}");
    assert_eq!(token_claims["appid"], client_id.as_str());

    // zync's REST rule: a client exists only while its application is enabled.
    admin.put(&api.action_path(app_id, "suspend"), &[]).await;
    api.wait_client_gone(&idp, "suspending deletes the REST client", &client_id)
        .await;
    admin.put(&api.action_path(app_id, "resume"), &[]).await;
    api.wait_client(
        &idp,
        "resuming re-creates the REST client",
        &client_id,
        |c| c.secret.as_deref() == Some(secret.as_str()),
    )
    .await;
    admin.delete(&api.app_path(app_id), &[]).await;
    api.wait_client_gone(&idp, "the REST client is deleted", &client_id)
        .await;

    // The whole journey through the REST protocol, with the same Okta-shaped tokens.
    journey(&platform, &idp, &api).await;
}

/// What the IdP must hold for the service's applications, by system's rules for Keycloak: a client per application
/// with a key (id = application id, secret = first key, redirect URIs = its redirect URL, enabled while live).
async fn expected_keycloak_clients(admin: &Admin, service_id: i64) -> Vec<IdpClient> {
    let service = service_id.to_string();
    let body = admin
        .get(
            "/admin/api/applications.json",
            &[("service_id", service.as_str()), ("per_page", "500")],
        )
        .await;
    let mut clients: Vec<IdpClient> = body["applications"]
        .as_array()
        .unwrap_or_else(|| panic!("no applications in {body}"))
        .iter()
        .map(|a| a.get("application").unwrap_or(a))
        .filter(|a| a["client_secret"].is_string())
        .map(|a| IdpClient {
            client_id: str_of(a, "client_id").to_owned(),
            secret: a["client_secret"].as_str().map(str::to_owned),
            redirect_uris: a["redirect_url"]
                .as_str()
                .map(|r| vec![r.to_owned()])
                .unwrap_or_default(),
            enabled: a["enabled"].as_bool().unwrap_or(false),
        })
        .collect();
    clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    clients
}

/// zync's view of the applications whose sync is failing (their numeric ids).
async fn failing_syncs(platform: &Platform) -> Result<Vec<i64>, String> {
    let res = reqwest::Client::new()
        .get(platform.url("zync", "/sync/applications?state=failing"))
        .header(
            reqwest::header::AUTHORIZATION,
            format!("Token token=\"{}\"", platform.secrets.zync_token),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = res.json().await.map_err(|e| e.to_string())?;
    Ok(body["applications"]
        .as_array()
        .ok_or_else(|| format!("unexpected answer {body}"))?
        .iter()
        .filter_map(|a| a["application_id"].as_i64())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_stopped_while_applications_change_then_its_clients_match_system() {
    if tests::KeycloakSettings::from_env().is_some() {
        eprintln!("NOTE: skipped against a real Keycloak: the suite cannot stop and restart it");
        return;
    }
    let (mut platform, idp) = start_platform(IdpOptions::default()).await;
    let api = OidcApi::create(&platform, &idp, "outage-oidc", Protocol::Keycloak, None).await;
    let admin = platform.admin();

    // Three applications in sync before the outage.
    let mut before = Vec::new();
    for name in ["deleted", "updated", "suspended"] {
        let app = api
            .create_app(&admin, name, &format!("http://{name}.example.com/cb"))
            .await;
        let secret = str_of(&app, "client_secret").to_owned();
        api.wait_client(&idp, "the client appears", str_of(&app, "client_id"), |c| {
            c.secret.as_deref() == Some(secret.as_str())
        })
        .await;
        before.push(app);
    }
    let ids: Vec<i64> = before
        .iter()
        .map(|a| a["id"].as_i64().expect("app id"))
        .collect();
    let [deleted, updated, suspended] = ids[..] else {
        unreachable!()
    };

    // The gateway serves the API, and holds a token it has not seen yet for the outage.
    let (client_id, secret) = (
        str_of(&before[1], "client_id"),
        str_of(&before[1], "client_secret"),
    );
    api.wait_passes(
        &platform,
        &idp,
        "a token passes the gateway",
        client_id,
        secret,
    )
    .await;
    let unseen = idp
        .client_credentials_token(client_id, secret)
        .await
        .expect("token");

    // The IdP stops (its port refuses connections) while applications change.
    platform.idp_mut().stop().await;
    assert!(!platform.idp_mut().is_running());
    // Tokens are verified with the keys the gateway already has: API calls go on while the IdP is down.
    let (status, body) = api.call(&platform, &unseen).await;
    assert_eq!(status, StatusCode::OK, "during the outage: {body}");
    admin.delete(&api.app_path(deleted), &[]).await;
    admin
        .put(
            &api.app_path(updated),
            &[("redirect_url", "http://updated.example.com/new-cb")],
        )
        .await;
    admin.put(&api.action_path(suspended, "suspend"), &[]).await;
    let created = api
        .create_app(&admin, "created", "http://created.example.com/cb")
        .await;
    let created_id = created["id"].as_i64().expect("app id");
    let transient = api
        .create_app(&admin, "transient", "http://transient.example.com/cb")
        .await;
    admin
        .delete(
            &api.app_path(transient["id"].as_i64().expect("app id")),
            &[],
        )
        .await;

    // zync-que meets the outage: every change that needs the IdP fails and waits to be retried.
    let must_fail = [deleted, updated, suspended, created_id];
    eventually("zync reports the syncs failing", DEADLINE, || async {
        let failing = failing_syncs(&platform).await?;
        if must_fail.iter().all(|id| failing.contains(id)) {
            Ok(())
        } else {
            Err(format!("failing {failing:?}, waiting for {must_fail:?}"))
        }
    })
    .await;

    // The IdP returns on the same port with what it held (as Keycloak does with its database); zync-que's
    // retries bring it to exactly system's state.
    platform
        .idp_mut()
        .restart()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Retries back off exponentially (2 s base), so allow more than the usual deadline.
    let clients = eventually("the IdP's clients match system", DEADLINE * 3, || async {
        let expected = expected_keycloak_clients(&admin, api.service_id).await;
        let mut actual = idp.all_clients().await.map_err(|e| format!("{e:#}"))?;
        actual.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        if actual == expected {
            Ok(actual)
        } else {
            Err(format!("IdP {actual:?}\nsystem {expected:?}"))
        }
    })
    .await;
    assert_eq!(
        clients.len(),
        3,
        "updated, suspended and created: {clients:?}"
    );
    assert!(
        clients.iter().any(|c| !c.enabled),
        "the suspended application's client is disabled: {clients:?}"
    );

    // The client created during the outage works end to end.
    api.wait_passes(
        &platform,
        &idp,
        "the client created during the outage passes the gateway",
        str_of(&created, "client_id"),
        str_of(&created, "client_secret"),
    )
    .await;
}
