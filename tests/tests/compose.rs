//! docker-compose.yml cannot run here (no Docker engine), so this checks it against the workspace instead: every
//! service it builds is one of our binaries, and every variable it sets is one that binary reads.

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))
        .expect("docker-compose.yml exists");
    let mut value: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML");
    value.apply_merge().expect("merge keys resolve");
    // Merges nested one level down (`environment: {<<: *common-env}`) need a second pass per service.
    if let Some(services) = value.get_mut("services").and_then(Value::as_mapping_mut) {
        for (_, service) in services.iter_mut() {
            service.apply_merge().expect("merge keys resolve");
            if let Some(env) = service.get_mut("environment") {
                env.apply_merge().expect("merge keys resolve");
            }
        }
    }
    value
}

/// Every string literal in a crate's sources: the names a service can read from its environment.
fn string_literals(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            string_literals(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source file");
            out.extend(text.split('"').skip(1).step_by(2).map(str::to_owned));
        }
    }
}

#[test]
fn every_built_service_is_a_workspace_binary_reading_the_variables_it_is_given() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services is a map");
    let mut ours = 0;
    for (name, service) in services {
        let name = name.as_str().expect("service name");
        if service.get("build").is_none() {
            continue;
        }
        ours += 1;
        let binary = service["command"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: command names the binary"));
        assert!(
            tests::SERVICES.contains(&binary),
            "{name}: {binary} is not one of our services"
        );
        let mut known = BTreeSet::new();
        string_literals(&root().join(binary).join("src"), &mut known);
        string_literals(&root().join("platform/src"), &mut known);
        let env = service["environment"]
            .as_mapping()
            .expect("environment is a map");
        for key in env.keys() {
            let key = key.as_str().expect("variable name");
            assert!(
                known.contains(key),
                "{name} sets {key}, which {binary} never reads"
            );
        }
    }
    assert!(ours >= 5, "all five services are in the compose file");
}

#[test]
fn dependencies_exist_and_health_conditions_have_healthchecks() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services is a map");
    for (name, service) in services {
        let Some(deps) = service.get("depends_on").and_then(Value::as_mapping) else {
            continue;
        };
        for (dep, condition) in deps {
            let dep_service = services
                .get(dep)
                .unwrap_or_else(|| panic!("{name:?} depends on unknown {dep:?}"));
            if condition["condition"].as_str() == Some("service_healthy") {
                assert!(
                    dep_service.get("healthcheck").is_some(),
                    "{name:?} waits for {dep:?} to be healthy, but it has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn the_keycloak_realm_has_a_client_registration_account() {
    let text =
        std::fs::read_to_string(root().join("deploy/keycloak/realm.json")).expect("realm file");
    let realm: serde_json::Value = serde_json::from_str(&text).expect("realm is JSON");
    let client = realm["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["serviceAccountsEnabled"] == true))
        .expect("a confidential client with a service account");
    assert_eq!(client["publicClient"], false);
    let account = realm["users"]
        .as_array()
        .and_then(|u| {
            u.iter()
                .find(|u| u["serviceAccountClientId"] == client["clientId"])
        })
        .expect("its service account user");
    assert_eq!(
        account["clientRoles"]["realm-management"][0],
        "manage-clients"
    );
}
