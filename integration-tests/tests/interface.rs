//! The built wasm exports exactly the interface candid/icllm.did describes,
//! and carries that file as its `icp:public candid:service` metadata.

use candid_parser::utils::CandidSource;
use icllm::local_canister::find_or_build_wasm;
use std::collections::BTreeMap;

const DID: &str = include_str!("../../candid/icllm.did");

/// `method name → is query` from the wasm's `canister_update` / `canister_query`
/// exports, without ic-cdk's internal timer executor and the scheduler's
/// commit point (self-call targets, not part of the interface).
fn exported_methods(wasm: &[u8]) -> BTreeMap<String, bool> {
    let mut methods = BTreeMap::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::ExportSection(exports) = payload.expect("valid wasm") {
            for export in exports {
                let name = export.expect("valid export").name;
                if name.contains("<ic-cdk internal>") || name.contains("<icllm internal>") {
                    continue;
                }
                if let Some(m) = name.strip_prefix("canister_update ") {
                    methods.insert(m.to_string(), false);
                } else if let Some(m) = name.strip_prefix("canister_query ") {
                    methods.insert(m.to_string(), true);
                }
            }
        }
    }
    methods
}

fn custom_section(wasm: &[u8], wanted: &str) -> Option<Vec<u8>> {
    wasmparser::Parser::new(0).parse_all(wasm).find_map(|p| match p.ok()? {
        wasmparser::Payload::CustomSection(c) if c.name() == wanted => Some(c.data().to_vec()),
        _ => None,
    })
}

#[test]
fn wasm_exports_match_the_did_file() {
    let wasm = find_or_build_wasm(None).unwrap();
    let (env, service) = CandidSource::Text(DID).load().expect("the did file parses");
    let service = service.expect("the did file has a service");
    let did_methods: BTreeMap<String, bool> = env
        .as_service(&service)
        .expect("a service type")
        .iter()
        .map(|(name, ty)| {
            let func = env.as_func(ty).expect("methods are functions");
            (name.to_string(), func.is_query())
        })
        .collect();
    assert_eq!(exported_methods(&wasm), did_methods);
}

#[test]
fn wasm_carries_the_did_file_as_metadata() {
    let wasm = find_or_build_wasm(None).unwrap();
    let section = custom_section(&wasm, "icp:public candid:service").expect("candid:service metadata");
    assert_eq!(String::from_utf8(section).unwrap(), DID);
}
