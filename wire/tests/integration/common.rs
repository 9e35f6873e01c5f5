//! Proptest strategies for every message type, and a tiny raw CBOR builder for
//! crafting inputs our encoder would never produce.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::collection::{btree_map, vec};
use proptest::num::{f32 as f32s, f64 as f64s};
use proptest::option;
use proptest::prelude::*;
use wire::{
    Ack, AgentEvent, Batch, Body, CertificateRenewed, CollectorError, DecodeError, Disk, Epoch,
    EpochStarted, LoadAverage, Memory, NetworkInterface, OutboxOverflow, Package, PackageManager,
    PatchStatus, Presence, Record, SchemaVersion, Started, Telemetry, Temperature, UnixMillis,
};

/// Finite floats: NaN is encodable but not equal to itself, which would make
/// round-trip equality meaningless.
fn finite_f32() -> impl Strategy<Value = f32> {
    f32s::POSITIVE | f32s::NEGATIVE | f32s::NORMAL | f32s::SUBNORMAL | f32s::ZERO
}

fn finite_f64() -> impl Strategy<Value = f64> {
    f64s::POSITIVE | f64s::NEGATIVE | f64s::NORMAL | f64s::SUBNORMAL | f64s::ZERO
}

/// Short arbitrary Unicode without control characters (which names may not hold), well within
/// the name limit.
fn name() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,12}"
}

/// A kind name none of our open enums knows.
fn unknown_kind(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    "[a-z_]{0,10}".prop_filter("must be unknown", move |kind| {
        !known.contains(&kind.as_str())
    })
}

pub fn version_in_major(major: u16) -> impl Strategy<Value = SchemaVersion> {
    any::<u16>().prop_map(move |minor| SchemaVersion::new(major, minor))
}

pub fn memory() -> impl Strategy<Value = Memory> {
    (any::<u64>(), any::<u64>()).prop_map(|(total_bytes, available_bytes)| Memory {
        total_bytes,
        available_bytes,
    })
}

pub fn disk() -> impl Strategy<Value = Disk> {
    (name(), any::<u64>(), any::<u64>()).prop_map(|(mount, total_bytes, free_bytes)| Disk {
        mount,
        total_bytes,
        free_bytes,
    })
}

pub fn temperature() -> impl Strategy<Value = Temperature> {
    (name(), finite_f32()).prop_map(|(zone, celsius)| Temperature { zone, celsius })
}

pub fn load() -> impl Strategy<Value = LoadAverage> {
    (finite_f32(), finite_f32(), finite_f32()).prop_map(|(one, five, fifteen)| LoadAverage {
        one,
        five,
        fifteen,
    })
}

pub fn network_interface() -> impl Strategy<Value = NetworkInterface> {
    (name(), any::<[u64; 6]>()).prop_map(|(name, counters)| NetworkInterface {
        name,
        rx_bytes: counters[0],
        tx_bytes: counters[1],
        rx_packets: counters[2],
        tx_packets: counters[3],
        rx_errors: counters[4],
        tx_errors: counters[5],
    })
}

pub fn telemetry() -> impl Strategy<Value = Telemetry> {
    (
        option::of(finite_f32()),
        option::of(memory()),
        vec(disk(), 0..4),
        vec(temperature(), 0..4),
        option::of(any::<u64>()),
        option::of(load()),
        vec(network_interface(), 0..4),
        btree_map(name(), finite_f64(), 0..6),
    )
        .prop_map(
            |(cpu, memory, disks, temperatures, uptime, load, network, custom)| Telemetry {
                cpu_usage_percent: cpu,
                memory,
                disks,
                temperatures,
                uptime_secs: uptime,
                load,
                network,
                custom,
            },
        )
}

pub fn package_manager() -> impl Strategy<Value = PackageManager> {
    prop_oneof![
        Just(PackageManager::Apt),
        Just(PackageManager::Apk),
        Just(PackageManager::Opkg),
        unknown_kind(&["apt", "apk", "opkg"]).prop_map(PackageManager::Other),
    ]
}

pub fn package() -> impl Strategy<Value = Package> {
    (name(), name(), option::of(name()), any::<bool>()).prop_map(
        |(name, installed, candidate, security)| Package {
            name,
            installed,
            candidate,
            security,
        },
    )
}

pub fn patch_status() -> impl Strategy<Value = PatchStatus> {
    (
        name(),
        name(),
        package_manager(),
        vec(package(), 0..8),
        any::<bool>(),
        option::of(any::<u64>().prop_map(UnixMillis)),
    )
        .prop_map(
            |(os_id, os_version, package_manager, packages, reboot_required, refreshed)| {
                PatchStatus {
                    os_id,
                    os_version,
                    package_manager,
                    packages,
                    reboot_required,
                    lists_refreshed_at: refreshed,
                }
            },
        )
}

pub fn agent_event() -> impl Strategy<Value = AgentEvent> {
    prop_oneof![
        name().prop_map(|agent_version| AgentEvent::Started(Started { agent_version })),
        any::<(u64, u64, u64)>().prop_map(|(dropped, first_seq, last_seq)| {
            AgentEvent::OutboxOverflow(OutboxOverflow {
                dropped,
                first_seq,
                last_seq,
            })
        }),
        any::<u64>().prop_map(|millis| AgentEvent::CertificateRenewed(CertificateRenewed {
            not_after: UnixMillis(millis),
        })),
        (name(), "([^\\p{Cc}]|[\\t\\n\\r]){0,40}").prop_map(|(collector, message)| {
            AgentEvent::CollectorError(CollectorError { collector, message })
        }),
        any::<(u64, u64, u64, u64, u64)>().prop_map(
            |(previous, epoch, first_seq, server_watermark, last_appended)| {
                AgentEvent::EpochStarted(EpochStarted {
                    previous,
                    epoch,
                    first_seq,
                    server_watermark,
                    last_appended,
                })
            }
        ),
        unknown_kind(&[
            "started",
            "outbox_overflow",
            "certificate_renewed",
            "collector_error",
            "epoch_started",
        ])
        .prop_map(|kind| AgentEvent::Other { kind }),
    ]
}

pub fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        telemetry().prop_map(Body::Telemetry),
        patch_status().prop_map(Body::PatchStatus),
        agent_event().prop_map(Body::Event),
        unknown_kind(&["tel", "pat", "evt"]).prop_map(|kind| Body::Unknown { kind }),
    ]
}

/// A valid batch: sequence numbers start above zero and strictly increase.
pub fn batch() -> impl Strategy<Value = Batch> {
    (
        version_in_major(SchemaVersion::CURRENT.major),
        1..u64::MAX / 2,
        vec((1..1_000u64, any::<u64>(), body()), 0..6),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(version, first_seq, parts, epoch)| {
            let mut seq = first_seq;
            let records = parts
                .into_iter()
                .map(|(step, millis, body)| {
                    seq += step;
                    Record {
                        seq,
                        recorded_at: UnixMillis(millis),
                        body,
                    }
                })
                .collect();
            Batch {
                version,
                records,
                epoch: epoch.map(|id| Epoch {
                    id,
                    first_seq: first_seq.max(1),
                }),
            }
        })
}

pub fn ack() -> impl Strategy<Value = Ack> {
    (
        version_in_major(SchemaVersion::CURRENT.major),
        any::<u64>(),
        any::<Option<u64>>(),
        any::<bool>(),
        vec(any::<(u64, u64)>(), 0..4),
    )
        .prop_map(
            |(version, watermark, epoch, new_epoch, handled_above)| Ack {
                version,
                watermark,
                epoch,
                new_epoch,
                handled_above,
            },
        )
}

pub fn presence() -> impl Strategy<Value = Presence> {
    (
        version_in_major(SchemaVersion::CURRENT.major),
        any::<bool>(),
    )
        .prop_map(|(version, online)| Presence { version, online })
}

/// A batch of one record with `body`, sequence number 1.
pub fn batch_of(body: Body) -> Batch {
    Batch::new(vec![Record {
        seq: 1,
        recorded_at: UnixMillis(1_700_000_000_000),
        body,
    }])
}

/// A telemetry sample with every part filled.
pub fn full_telemetry() -> Telemetry {
    Telemetry {
        cpu_usage_percent: Some(12.5),
        memory: Some(Memory {
            total_bytes: 4 << 30,
            available_bytes: 3 << 30,
        }),
        disks: vec![Disk {
            mount: "/".into(),
            total_bytes: 32 << 30,
            free_bytes: 20 << 30,
        }],
        temperatures: vec![Temperature {
            zone: "cpu-thermal".into(),
            celsius: 48.3,
        }],
        uptime_secs: Some(86_400),
        load: Some(LoadAverage {
            one: 0.5,
            five: 0.25,
            fifteen: 0.125,
        }),
        network: vec![NetworkInterface {
            name: "eth0".into(),
            rx_bytes: 1,
            tx_bytes: 2,
            rx_packets: 3,
            tx_packets: 4,
            rx_errors: 5,
            tx_errors: 6,
        }],
        custom: BTreeMap::from([("queue_depth".to_owned(), 7.0)]),
    }
}

/// A patch status with one package that has a security upgrade.
pub fn one_package_status() -> PatchStatus {
    PatchStatus {
        os_id: "debian".into(),
        os_version: "12".into(),
        package_manager: PackageManager::Apt,
        packages: vec![Package {
            name: "openssl".into(),
            installed: "3.0.11-1~deb12u1".into(),
            candidate: Some("3.0.11-1~deb12u2".into()),
            security: true,
        }],
        reboot_required: false,
        lists_refreshed_at: Some(UnixMillis(1_700_000_000_000)),
    }
}

/// A length no honest message has: four billion elements, entries or bytes.
pub const HUGE: u64 = 1 << 32;

/// Checks that `result` is a refusal as malformed, reported with the reason `malformed`.
#[track_caller]
pub fn assert_malformed<T: Debug>(result: Result<T, DecodeError>) {
    match result {
        Err(error @ DecodeError::Malformed(_)) => assert_eq!(error.reason(), "malformed"),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

/// Checks that `decode` refuses `bytes` as malformed, quickly. A decoder that honoured a lying
/// length would allocate gigabytes (and abort) or spin.
#[track_caller]
pub fn assert_refused_fast<T: Debug>(
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    bytes: &[u8],
) {
    let start = Instant::now();
    assert_malformed(decode(bytes));
    assert!(start.elapsed() < Duration::from_secs(1));
}

/// Raw CBOR, for inputs our encoder would never write.
pub mod raw {
    /// An item head: major type and argument, in the shortest form.
    pub fn head(major: u8, argument: u64) -> Vec<u8> {
        let major = major << 5;
        match argument {
            0..=23 => vec![major | argument as u8],
            24..=0xff => vec![major | 24, argument as u8],
            0x100..=0xffff => [&[major | 25][..], &(argument as u16).to_be_bytes()].concat(),
            0x1_0000..=0xffff_ffff => {
                [&[major | 26][..], &(argument as u32).to_be_bytes()].concat()
            }
            _ => [&[major | 27][..], &argument.to_be_bytes()].concat(),
        }
    }

    pub fn uint(value: u64) -> Vec<u8> {
        head(0, value)
    }

    pub fn float(value: f64) -> Vec<u8> {
        [&[0xfb][..], &value.to_be_bytes()].concat()
    }

    pub fn text(value: &str) -> Vec<u8> {
        [head(3, value.len() as u64), value.as_bytes().to_vec()].concat()
    }

    pub fn array(len: u64) -> Vec<u8> {
        head(4, len)
    }

    pub fn map(len: u64) -> Vec<u8> {
        head(5, len)
    }

    /// `[1, 0]`: the current version, as it appears under `"v"`.
    pub fn version(major: u64, minor: u64) -> Vec<u8> {
        [array(2), uint(major), uint(minor)].concat()
    }

    /// The start of a batch map of `len` entries, the first `"v": [1, 0]`; the caller appends
    /// the other entries.
    pub fn versioned_map(len: u64) -> Vec<u8> {
        [map(len), text("v"), version(1, 0)].concat()
    }

    /// The start of a batch map of two entries, `"v": [1, 0]` and the key `"r"`;
    /// the caller appends the records value.
    pub fn batch_prefix() -> Vec<u8> {
        [versioned_map(2), text("r")].concat()
    }

    /// A batch of one record `{"s": seq, "t": 0, "b": body}`, its sequence number and body
    /// given raw.
    pub fn one_record(seq: Vec<u8>, body: Vec<u8>) -> Vec<u8> {
        [
            batch_prefix(),
            array(1),
            map(3),
            text("s"),
            seq,
            text("t"),
            uint(0),
            text("b"),
            body,
        ]
        .concat()
    }

    /// The start of a one-record batch up to the record's one-entry body map;
    /// the caller appends the kind and the payload.
    pub fn body_prefix() -> Vec<u8> {
        one_record(uint(1), map(1))
    }

    /// [`body_prefix`] followed by the key `kind`; the caller appends the payload.
    pub fn record_prefix(kind: &str) -> Vec<u8> {
        [body_prefix(), text(kind)].concat()
    }

    /// A one-record batch whose body of `kind` has the one field `key`, its value `value`.
    pub fn body_field(kind: &str, key: &str, value: Vec<u8>) -> Vec<u8> {
        [record_prefix(kind), map(1), text(key), value].concat()
    }
}
