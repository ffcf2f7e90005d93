//! Prints the operators of the functions whose demangled name contains a
//! string, with each operator's IC weight (a look at what a kernel
//! compiled to): `cargo run --release -p local-ic --example dump_function -- WASM NAME`.

use wasmparser::{Parser, Payload};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, needle] = &args[..] else {
        eprintln!("usage: dump_function WASM NAME_SUBSTRING");
        std::process::exit(2);
    };
    let wasm = std::fs::read(path).expect("read wasm");
    let info = local_ic::instrument::instrument_with(
        &wasm,
        local_ic::instrument::Options {
            profile: true,
            track_pages: false,
        },
    )
    .expect("valid module")
    .info;
    let imported = info.function_imports.len() as u32;
    let mut index = imported;
    for payload in Parser::new(0).parse_all(&wasm) {
        if let Payload::CodeSectionEntry(body) = payload.expect("parse") {
            let name = info.function_names.get(&index).cloned().unwrap_or_default();
            if name.contains(needle.as_str()) {
                println!("== func[{index}] {name}");
                let mut r = body.get_operators_reader().expect("ops");
                let mut total = 0;
                while !r.eof() {
                    let op = r.read().expect("op");
                    let w = local_ic::weights::weight(&op, false);
                    total += w;
                    println!("{w:>3}  {op:?}");
                }
                println!("== static weight {total}");
            }
            index += 1;
        }
    }
}
