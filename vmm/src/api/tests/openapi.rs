//! `openapi.json` held to the code: its operations are the endpoints, each lists exactly the
//! statuses the server can answer it with, and what the server sends fits its schemas.

use std::collections::BTreeSet;
use std::path::PathBuf;

use devices::virtio::{DeviceKind, DeviceStats};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::api::routes::{self, Endpoint, VmRouter};
use crate::api::{ApiReply, ApiRouter, http};
use crate::config::CpuPowerMode;
use crate::events::{Denial, VmEvent, VmEventKind, WakeSource};
use crate::handle::{VcpuInfo, VcpuPower, VmHandle, VmInfo, VmState};
use crate::snapshot::{AfterSnapshot, SnapshotRequest, SnapshotTaken};
use crate::virtio_devices::DeviceInfo;

/// Every variant of a fieldless enum; does not compile once the enum has another.
macro_rules! every {
    ($enum:ident: $($variant:ident),+ $(,)?) => {{
        let _exhaustive = |value: $enum| match value {
            $($enum::$variant)|+ => {}
        };
        [$($enum::$variant),+]
    }};
}

fn document() -> Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
}

/// The object a `#/...` reference points to.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference.strip_prefix('#').expect("a local reference");
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("{reference} points nowhere"))
}

/// The responses of the endpoint's operation, keyed by status, references resolved.
fn responses<'a>(doc: &'a Value, endpoint: Endpoint) -> Vec<(u16, &'a Value)> {
    let resolved = |response: &'a Value| match response["$ref"].as_str() {
        Some(reference) => resolve(doc, reference),
        None => response,
    };
    let path = format!("/{}", endpoint.name());
    let operation = &doc["paths"][&path][endpoint.method().to_lowercase()];
    let responses = operation["responses"].as_object();
    let responses = responses.unwrap_or_else(|| panic!("{path}: no responses"));
    responses
        .iter()
        .map(|(status, response)| (status.parse().expect("a status"), resolved(response)))
        .collect()
}

/// The schema of the endpoint's `status` response in `media` type.
fn response_schema<'a>(doc: &'a Value, endpoint: Endpoint, status: u16, media: &str) -> &'a Value {
    let (_, response) = responses(doc, endpoint)
        .into_iter()
        .find(|(documented, _)| *documented == status)
        .unwrap_or_else(|| panic!("{}: {status} is not documented", endpoint.name()));
    &response["content"][media]["schema"]
}

/// The component schema called `name`.
fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    resolve(doc, &format!("#/components/schemas/{name}"))
}

/// The name of a shared response for `status`: its reason phrase, as in `BadRequest`.
fn response_name(status: u16) -> String {
    http::reason(status).replace(' ', "")
}

/// Whether `value` fits `schema`, as far as this document uses OpenAPI: references, `type`
/// (every integer here is unsigned), `nullable`, `enum`, objects (closed: each property they
/// have is documented), arrays, and `oneOf` picked by a `discriminator`. The error says where
/// it does not.
fn fits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        return fits(doc, resolve(doc, reference), value, at);
    }
    let discriminator = &schema["discriminator"];
    if let Some(property) = discriminator["propertyName"].as_str() {
        let tag = value[property].as_str().unwrap_or_default();
        let variant = discriminator["mapping"][tag].as_str();
        let variant =
            variant.ok_or_else(|| format!("{at}: {property} {tag:?} is not documented"))?;
        return fits(doc, resolve(doc, variant), value, at);
    }
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    let fits_type = match (schema["type"].as_str(), value) {
        (Some("object"), Value::Object(object)) => return fits_object(doc, schema, object, at),
        (Some("array"), Value::Array(items)) => {
            let mut items = items.iter().enumerate();
            let item = |(index, item)| fits(doc, &schema["items"], item, &format!("{at}[{index}]"));
            return items.try_for_each(item);
        }
        (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), _) => value.is_u64(),
        (Some("number"), _) => value.is_number(),
        _ => false,
    };
    match fits_type {
        true => Ok(()),
        false => Err(format!("{at}: {value} is not a {}", schema["type"])),
    }
}

/// Whether `object` has every property the object `schema` requires, and no other than it
/// lists, each fitting its schema.
fn fits_object(
    doc: &Value,
    schema: &Value,
    object: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let required = schema["required"].as_array().into_iter().flatten();
    if let Some(missing) = required
        .filter_map(Value::as_str)
        .find(|name| !object.contains_key(*name))
    {
        return Err(format!("{at}: no {missing}"));
    }
    for (name, field) in object {
        let at = format!("{at}.{name}");
        let field_schema = schema["properties"].get(name);
        fits(
            doc,
            field_schema.ok_or_else(|| format!("{at} is not documented"))?,
            field,
            &at,
        )?;
    }
    Ok(())
}

#[track_caller]
fn assert_fits(doc: &Value, schema: &Value, value: impl Serialize) {
    let value = serde_json::to_value(value).unwrap();
    if let Err(mismatch) = fits(doc, schema, &value, "") {
        panic!("Does not fit the document: {mismatch}, in {value}");
    }
}

#[test]
fn the_document_has_one_operation_per_endpoint_and_no_other() {
    let doc = document();
    let server = doc["servers"][0]["url"].as_str().unwrap();
    let prefix = server.strip_prefix("http://localhost").unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((format!("{prefix}{path}"), method.to_uppercase()));
        }
    }
    let served = Endpoint::ALL.map(|endpoint| (endpoint.path(), endpoint.method().to_owned()));
    assert_eq!(documented, BTreeSet::from(served));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn each_operation_lists_exactly_the_statuses_the_server_can_answer_it_with() {
    let doc = document();
    for endpoint in Endpoint::ALL {
        let documented = responses(&doc, endpoint)
            .into_iter()
            .map(|(status, _)| status);
        let documented: BTreeSet<u16> = documented.collect();
        let name = endpoint.name();
        assert_eq!(
            documented,
            endpoint.statuses(),
            "{name}: documented (left), code (right)"
        );
    }
}

#[test]
fn requests_for_no_operation_have_their_responses_described() {
    let doc = document();
    for status in routes::unrouted_statuses() {
        let name = response_name(status);
        assert!(
            doc["components"]["responses"][&name].is_object(),
            "{status}: no response {name}"
        );
    }
}

#[test]
fn every_reference_resolves_and_shared_responses_are_named_after_their_status() {
    let doc = document();
    let text = include_str!("../openapi.json");
    let references = text
        .split("\"#/")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()]);
    for reference in references {
        resolve(&doc, &format!("#/{reference}"));
    }
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for operation in operations.as_object().unwrap().values() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if let Some(reference) = response["$ref"].as_str() {
                    let name = response_name(status.parse().unwrap());
                    assert_eq!(
                        reference,
                        format!("#/components/responses/{name}"),
                        "{path}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_examples_fit_their_schemas() {
    let doc = document();
    let snapshot =
        &doc["paths"]["/vm.snapshot"]["put"]["requestBody"]["content"]["application/json"];
    let request: SnapshotRequest = serde_json::from_value(snapshot["example"].clone()).unwrap();
    assert_fits(&doc, &snapshot["schema"], request);
    for endpoint in Endpoint::ALL {
        for (_, response) in responses(&doc, endpoint) {
            let media = response["content"].as_object().into_iter().flatten();
            for (_, media) in media.filter(|(_, media)| !media["example"].is_null()) {
                assert_fits(&doc, &media["schema"], &media["example"]);
            }
        }
    }
}

#[test]
fn the_router_answers_as_documented() {
    let doc = document();
    let router = VmRouter::new(VmHandle::detached());
    let snapshot = br#"{"destination": "/var/lib/vms/a"}"#;
    // A VM that never started: vm.info answers, the actions are refused, shutdown is accepted.
    let requests: [(Endpoint, &[u8]); 10] = [
        (Endpoint::Info, b""),
        (Endpoint::Wakeup, b""),
        (Endpoint::PowerButton, b"{}"),
        (Endpoint::Pause, b"[]"),
        (Endpoint::Pause, b"{"),
        (Endpoint::Resume, b""),
        (Endpoint::Sleep, b""),
        (Endpoint::Snapshot, snapshot),
        (Endpoint::Snapshot, b"{}"),
        (Endpoint::Shutdown, b""),
    ];
    let mut statuses = BTreeSet::new();
    for (endpoint, body) in requests {
        let path = endpoint.path();
        let (status, body) = match router.route(endpoint.method(), &path, body) {
            ApiReply::Json { status, body } => (status, body),
            ApiReply::Stream(_) => panic!("{path}: a stream on a VM that never started"),
        };
        statuses.insert(status);
        let schema = response_schema(&doc, endpoint, status, "application/json");
        assert_fits(&doc, schema, body);
    }
    assert_eq!(statuses, BTreeSet::from([200, 400, 409]));
}

#[test]
fn the_replies_fit_their_schemas_with_every_field_set() {
    let doc = document();
    let device = DeviceInfo {
        id: Some("root".into()),
        path: Some("rootfs.ext4".into()),
        readonly: true,
        tap: Some("vmtap0".into()),
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        cid: Some(3),
        socket: Some("/tmp/vm.vsock".into()),
        mmio_base: 0x0a00_0000,
        spi: 16,
        stats: DeviceStats::default(),
        ..DeviceInfo::new(DeviceKind::Block)
    };
    let info = VmInfo {
        state: VmState::Suspended,
        vcpus: vec![VcpuInfo {
            index: 0,
            power: VcpuPower::Suspended,
        }],
        memory_mib: 512,
        uptime_s: 1.5,
        boots: 1,
        suspend_count: 2,
        last_wake_source: Some(WakeSource::Rtc),
        last_suspend_latency_us: Some(400),
        last_resume_latency_us: Some(550),
        devices: vec![device],
        console_dropped_bytes: 0,
        cpu_power: Some(CpuPowerMode::Vmm),
        psci_version: Some("1.3".into()),
        vcpu_kicks: 4,
        restored_from: Some("/var/lib/vms/a".into()),
    };
    let vm_info = response_schema(&doc, Endpoint::Info, 200, "application/json");
    assert_fits(&doc, vm_info, &info);
    // The fields a device of another kind leaves out are optional.
    let rng = DeviceInfo::new(DeviceKind::Rng);
    let devices = vec![rng];
    assert_fits(&doc, vm_info, VmInfo { devices, ..info });

    let taken = SnapshotTaken {
        path: "/var/lib/vms/a".into(),
        bytes: 41_160_704,
        memory_bytes: 512 << 20,
        ms: 212,
    };
    let snapshot_taken = response_schema(&doc, Endpoint::Snapshot, 200, "application/json");
    assert_fits(&doc, snapshot_taken, taken);
}

#[test]
fn every_value_of_the_enums_is_documented() {
    let doc = document();
    let states = every!(VmState:
        Booting, Running, Paused, Suspending, Suspended, Resuming, ShuttingDown, Stopped
    );
    for state in states {
        assert_fits(&doc, schema(&doc, "VmState"), state);
    }
    for power in every!(VcpuPower: On, Off, Suspended, Unknown) {
        assert_fits(&doc, schema(&doc, "VcpuInfo"), VcpuInfo { index: 0, power });
    }
    for source in every!(WakeSource: Rtc, Gpio, Serial, Unknown) {
        assert_fits(&doc, schema(&doc, "WakeSource"), source);
    }
    for kind in every!(DeviceKind: Block, Rng, Net, Vsock) {
        assert_fits(&doc, schema(&doc, "DeviceInfo"), DeviceInfo::new(kind));
    }
    for then in every!(AfterSnapshot: Stay, Exit) {
        let request = SnapshotRequest {
            destination: "a".into(),
            then,
        };
        assert_fits(&doc, schema(&doc, "SnapshotRequest"), request);
    }
    let power = &schema(&doc, "VmInfo")["properties"]["cpu_power"];
    for mode in [CpuPowerMode::Vmm, CpuPowerMode::Kvm] {
        assert_fits(&doc, power, mode);
    }
}

/// One event of each kind, and one denial of each kind.
fn every_event() -> Vec<VmEventKind> {
    let path = PathBuf::from("/var/lib/vms/a");
    let denials = [
        Denial::OtherCpusOn { count: 1 },
        Denial::InvalidEntry { entry: 0x3 },
        Denial::Busy,
        Denial::Stopping,
        Denial::NotSystemSuspend { function_id: 0 },
    ];
    let _exhaustive = |denial: Denial| match denial {
        Denial::OtherCpusOn { .. }
        | Denial::InvalidEntry { .. }
        | Denial::Busy
        | Denial::Stopping
        | Denial::NotSystemSuspend { .. } => {}
    };
    let denied = denials.map(|reason| VmEventKind::SuspendDenied { vcpu: 1, reason });
    let kinds = [
        VmEventKind::SuspendRequested {
            vcpu: 0,
            entry: 0x4020_0000,
            context_id: 0,
        },
        VmEventKind::Suspended {
            vcpu: 0,
            latency_us: 400,
        },
        VmEventKind::Woken {
            source: WakeSource::Gpio,
        },
        VmEventKind::Resumed {
            vcpu: 0,
            latency_us: 550,
            source: WakeSource::Gpio,
        },
        VmEventKind::CpuOn { vcpu: 0, target: 1 },
        VmEventKind::CpuOff { vcpu: 1 },
        VmEventKind::Hibernated { vcpu: 0 },
        VmEventKind::Snapshotted {
            path: path.clone(),
            bytes: 1,
            ms: 2,
        },
        VmEventKind::Restored { path, ms: 3 },
        VmEventKind::Lagged { limit: 256 },
    ];
    let _exhaustive = |kind: &VmEventKind| match kind {
        VmEventKind::SuspendRequested { .. }
        | VmEventKind::SuspendDenied { .. }
        | VmEventKind::Suspended { .. }
        | VmEventKind::Woken { .. }
        | VmEventKind::Resumed { .. }
        | VmEventKind::CpuOn { .. }
        | VmEventKind::CpuOff { .. }
        | VmEventKind::Hibernated { .. }
        | VmEventKind::Snapshotted { .. }
        | VmEventKind::Restored { .. }
        | VmEventKind::Lagged { .. } => {}
    };
    kinds.into_iter().chain(denied).collect()
}

#[test]
fn the_events_are_the_documented_ones_and_fit_their_schemas() {
    let doc = document();
    let stream = response_schema(&doc, Endpoint::Events, 200, "application/x-ndjson");
    let (mut kinds, mut denials) = (BTreeSet::new(), BTreeSet::new());
    for kind in every_event() {
        let event = serde_json::to_value(VmEvent::now(kind)).unwrap();
        assert_fits(&doc, stream, &event);
        kinds.insert(event["event"].as_str().unwrap().to_owned());
        if let Some(denial) = event["reason"]["kind"].as_str() {
            denials.insert(denial.to_owned());
        }
    }
    let documented = |name| {
        let mapping = schema(&doc, name)["discriminator"]["mapping"].as_object();
        mapping.unwrap().keys().cloned().collect()
    };
    assert_eq!(kinds, documented("VmEvent"));
    assert_eq!(denials, documented("Denial"));
}
