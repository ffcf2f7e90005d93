//! Rewrites a canister module so it counts its own instructions with the
//! replica's weights, the way the replica does it
//! (`rs/embedders/src/wasm_utils/instrumentation.rs`):
//!
//! * a new mutable `i64` global, the *counter*, holds the instructions still
//!   available in the current message; the host sets it to the message's
//!   limit before the message and reads it afterwards;
//! * every basic block starts with `counter -= <sum of the block's weights>`
//!   (block boundaries and weights: [`crate::weights`]); function entries
//!   cost [`weights::FUNCTION_ENTRY`] extra;
//! * at every function entry and loop header the counter is checked: if it is
//!   negative the code calls the added slice handler
//!   ([`crate::tracker::out_of_instructions`]), which starts the next slice
//!   or fails the message, so no host call sits on the hot path;
//! * with [`Options::track_pages`], every heap load and store first tests a
//!   per-wasm-page byte map and charges the first access and first write of
//!   a page in-band ([`crate::tracker`] explains why in wasm, not in a
//!   signal handler);
//! * `memory.copy` / `memory.fill` / `memory.init` additionally subtract
//!   their byte count at run time (a scratch local holds the length);
//! * the heap's size as the canister sees it lives in a mutable global of
//!   its own, the *logical size* in wasm pages: `memory.size` reads it, and
//!   `memory.grow` raises it, growing the wasmtime memory only when that is
//!   smaller. The host restores mutable globals when a message traps, so a
//!   trapped message's growth is rolled back as on the replica, although a
//!   wasmtime memory cannot shrink (the pages beyond stay mapped, zeroed by
//!   the heap rollback, and are reused by the next growth).
//!
//! **Wasm64** (the module's first memory is a memory64 one, as the
//! replica's `main_memory_type()` decides; [`ModuleInfo::mode`]): loads and
//! stores weigh 2 ([`crate::weights`]); the heap's maximum is capped at
//! 6 GiB (injected where the module declares none, a larger one refused),
//! so `memory.grow` beyond it returns -1; the logical size global and
//! `memory.grow`'s scratch are i64, and `memory.copy`/`memory.fill` charge
//! an i64 byte count (`memory.init`'s stays i32).
//!
//! The rewrite also exports what the host needs but a Rust canister does not
//! export: the counter, the memory, the function table (ic-cdk passes
//! callbacks as table indices) and every mutable global (so the host can
//! snapshot and restore `__stack_pointer` & co. when a message traps).
//! Function indices are unchanged (nothing is imported), so the name section
//! and element segments stay valid.
//!
//! **Profiling** ([`Options::profile`], off by default): every defined
//! function also gets a mutable `i64` global of its own, exported as
//! [`PROFILE_EXPORT_PREFIX`]`<function index>`, to which every block charge
//! of the function (and the byte count of its bulk memory ops) is *added*
//! beside the counter's subtraction. The counter's code and charges are the
//! same as without profiling, so instruction counts do not change; the sum of
//! the profile globals is what the counter lost to wasm code (the host's
//! system-API charges go to no function). The function names come from the
//! module's `name` section, demangled ([`ModuleInfo::function_names`]).

use std::collections::BTreeSet;

use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{
    BlockType, ConstExpr, ExportKind, ExportSection, Function, GlobalSection, GlobalType, Instruction, SectionId,
    ValType,
};
use wasmparser::{Operator, Payload, TypeRef, Validator, WasmFeatures};

use crate::tracker::{self, Var};
use crate::types::WasmExecutionMode;
use crate::weights;

/// Export name of the injected instruction counter global.
pub const COUNTER_EXPORT: &str = "__local_ic_instructions";
/// Export name under which memory 0 is (re-)exported.
pub const MEMORY_EXPORT: &str = "__local_ic_memory";
/// Export name under which table 0 is (re-)exported.
pub const TABLE_EXPORT: &str = "__local_ic_table";
/// Prefix of the export names of the module's own mutable globals.
pub const GLOBAL_EXPORT_PREFIX: &str = "__local_ic_global_";
/// Export name of the injected logical heap size global (wasm pages).
pub const HEAP_PAGES_EXPORT: &str = "__local_ic_heap_pages";

/// Prefix of the export names of the per-function profile globals
/// (profiling builds only), followed by the function index.
pub const PROFILE_EXPORT_PREFIX: &str = "__local_ic_profile_";

/// How to instrument.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// Also count each function's charges in a global of its own (see the
    /// module documentation). Slower; counts are unchanged.
    pub profile: bool,
    /// Track heap pages for the deterministic memory tracker's charges
    /// ([`crate::tracker`]). Slower; off for the legacy charges.
    pub track_pages: bool,
}

/// Initial value of the counter: large, so a start function (rare in
/// canisters) runs without tripping the check before the host sets a limit.
const COUNTER_INIT: i64 = i64::MAX / 2;

/// What the runtime needs to know about a module besides its code.
#[derive(Debug, Clone, Default)]
pub struct ModuleInfo {
    /// Imported functions as `(module, name)`.
    pub function_imports: Vec<(String, String)>,
    /// Imports that are not functions (memories, tables, globals) as
    /// `(module, name)`: canisters may not import these.
    pub other_imports: Vec<(String, String)>,
    /// Names of exported functions (e.g. `canister_update inc`).
    pub function_exports: BTreeSet<String>,
    /// Whether the module has a (defined) memory.
    pub has_memory: bool,
    /// Whether the module has a table.
    pub has_table: bool,
    /// Wasm32 or wasm64, from the module's first memory.
    pub mode: WasmExecutionMode,
    /// Export names of the mutable globals the rewrite exported.
    pub mutable_global_exports: Vec<String>,
    /// Profiling builds: the index of every defined function, in order (its
    /// profile global is exported as [`PROFILE_EXPORT_PREFIX`]`<index>`).
    pub profiled_functions: Vec<u32>,
    /// Profiling builds: demangled names from the `name` section, by
    /// function index (without the Rust hash suffix).
    pub function_names: std::collections::BTreeMap<u32, String>,
}

/// An instrumented module and what was learnt about it.
#[derive(Debug, Clone)]
pub struct Instrumented {
    /// The rewritten module, ready for `wasmtime::Module::new`.
    pub wasm: Vec<u8>,
    pub info: ModuleInfo,
}

/// The features the IC accepts. Relaxed SIMD and threads are rejected (they
/// are not deterministic), as is everything beyond wasm 2.0 except memory64
/// (wasm64 canisters).
fn ic_features() -> WasmFeatures {
    WasmFeatures::WASM2 | WasmFeatures::MEMORY64
}

/// The instrumented module may also use a second memory (the page map).
fn instrumented_features() -> WasmFeatures {
    ic_features() | WasmFeatures::MULTI_MEMORY
}

/// Validates `wasm` against the IC's feature set and instruments it.
/// Errors are human-readable reasons (without the "not valid" prefix).
pub fn instrument(wasm: &[u8]) -> Result<Instrumented, String> {
    instrument_with(wasm, Options::default())
}

/// [`instrument`] with options (profiling).
pub fn instrument_with(wasm: &[u8], options: Options) -> Result<Instrumented, String> {
    if wasm.len() < 8 || &wasm[0..4] != b"\0asm" {
        if wasm.starts_with(&[0x1f, 0x8b]) {
            return Err("gzip-compressed modules are not supported by local-ic; \
                        pass the uncompressed .wasm"
                .into());
        }
        return Err("the file is not a WebAssembly module (bad magic number)".into());
    }
    Validator::new_with_features(ic_features())
        .validate_all(wasm)
        .map_err(|e| format!("Wasm module failed validation: {e}"))?;

    let mut pre = prescan(wasm)?;
    if options.profile {
        pre.info.profiled_functions = (0..pre.defined_func_types.len() as u32)
            .map(|i| pre.info.function_imports.len() as u32 + i)
            .collect();
        pre.info.function_names = function_names(wasm);
    }
    let layout = pre.layout(options);
    let mut rewriter = Rewriter {
        pre: &pre,
        layout,
        profile: options.profile,
        current_profile_global: None,
        next_defined_func: 0,
        globals_emitted: false,
        exports_emitted: false,
    };
    let mut module = wasm_encoder::Module::new();
    rewriter
        .parse_core_module(&mut module, wasmparser::Parser::new(0), wasm)
        .map_err(|e| format!("instrumentation failed: {e}"))?;
    let out = module.finish();
    // Cheap insurance: a rewrite bug should show up here, not as a confusing
    // wasmtime error.
    Validator::new_with_features(instrumented_features())
        .validate_all(&out)
        .map_err(|e| format!("internal error: instrumented module is invalid: {e}"))?;
    Ok(Instrumented {
        wasm: out,
        info: pre.info,
    })
}

/// Facts gathered before rewriting.
struct Prescan {
    info: ModuleInfo,
    /// Parameter count of every type in the type section (0 for non-func types).
    type_params: Vec<u32>,
    /// Type index of each defined function.
    defined_func_types: Vec<u32>,
    imported_globals: u32,
    defined_globals: u32,
    /// Indices of the defined mutable globals.
    mutable_globals: Vec<u32>,
    /// Memory 0 is a memory64 (the module is wasm64).
    memory64: bool,
    /// Initial and declared maximum pages of memory 0.
    initial_pages: u64,
    maximum_pages: Option<u64>,
    /// Entries in the type section.
    types: u32,
}

impl Prescan {
    fn counter_index(&self) -> u32 {
        self.imported_globals + self.defined_globals
    }

    /// The logical heap size global (see the module docs).
    fn heap_pages_index(&self) -> u32 {
        self.counter_index() + 1
    }

    /// The profile global of the `defined`-th defined function.
    fn profile_global(&self, defined: usize) -> u32 {
        self.counter_index() + 2 + defined as u32
    }

    /// Where the added code and its globals go (None: the module has no
    /// functions, so nothing runs and nothing is added).
    fn layout(&self, options: Options) -> Option<tracker::Layout> {
        if self.defined_func_types.is_empty() {
            return None;
        }
        let profile_globals = if options.profile {
            self.defined_func_types.len() as u32
        } else {
            0
        };
        let functions = self.info.function_imports.len() as u32 + self.defined_func_types.len() as u32;
        Some(tracker::Layout {
            counter: self.counter_index(),
            first_global: self.counter_index() + 2 + profile_globals,
            touch: functions + 1,
            pages_memory: 1,
            track_pages: options.track_pages && self.info.has_memory,
            ooi: functions,
            ooi_type: self.types,
            touch_type: self.types + 1,
            addr: self.addr(),
            max_heap_pages: self.info.mode.max_heap_pages(),
        })
    }

    /// The heap's address type.
    fn addr(&self) -> tracker::Addr {
        tracker::Addr {
            memory64: self.memory64,
        }
    }
}

/// Demangled function names from the `name` section (empty without one).
fn function_names(wasm: &[u8]) -> std::collections::BTreeMap<u32, String> {
    let mut names = std::collections::BTreeMap::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        let Ok(Payload::CustomSection(section)) = payload else {
            continue;
        };
        let wasmparser::KnownCustom::Name(reader) = section.as_known() else {
            continue;
        };
        for sub in reader.into_iter().flatten() {
            if let wasmparser::Name::Function(map) = sub {
                for naming in map.into_iter().flatten() {
                    let name = format!("{:#}", rustc_demangle::demangle(naming.name));
                    names.insert(naming.index, name);
                }
            }
        }
    }
    names
}

fn prescan(wasm: &[u8]) -> Result<Prescan, String> {
    let mut pre = Prescan {
        info: ModuleInfo::default(),
        type_params: Vec::new(),
        defined_func_types: Vec::new(),
        imported_globals: 0,
        defined_globals: 0,
        mutable_globals: Vec::new(),
        memory64: false,
        initial_pages: 0,
        maximum_pages: None,
        types: 0,
    };
    let err = |e: wasmparser::BinaryReaderError| e.to_string();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(err)? {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    pre.type_params.push(ty.map_err(err)?.params().len() as u32);
                    pre.types += 1;
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(err)?;
                    let key = (import.module.to_string(), import.name.to_string());
                    match import.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => pre.info.function_imports.push(key),
                        TypeRef::Global(_) => {
                            pre.imported_globals += 1;
                            pre.info.other_imports.push(key);
                        }
                        TypeRef::Memory(m) => {
                            if !pre.info.has_memory {
                                pre.memory64 = m.memory64;
                            }
                            pre.info.other_imports.push(key);
                        }
                        _ => pre.info.other_imports.push(key),
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    pre.defined_func_types.push(ty.map_err(err)?);
                }
            }
            Payload::TableSection(reader) => {
                pre.info.has_table |= reader.count() > 0;
            }
            Payload::MemorySection(reader) => {
                for mem in reader {
                    let mem = mem.map_err(err)?;
                    if !pre.info.has_memory {
                        pre.memory64 = mem.memory64;
                        pre.initial_pages = mem.initial;
                        pre.maximum_pages = mem.maximum;
                    }
                    pre.info.has_memory = true;
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    let global = global.map_err(err)?;
                    let index = pre.imported_globals + pre.defined_globals;
                    if global.ty.mutable {
                        pre.mutable_globals.push(index);
                    }
                    pre.defined_globals += 1;
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(err)?;
                    if export.kind == wasmparser::ExternalKind::Func {
                        pre.info.function_exports.insert(export.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if pre.memory64 {
        pre.info.mode = WasmExecutionMode::Wasm64;
        let limit = WasmExecutionMode::Wasm64.max_heap_pages();
        if let Some(declared) = pre.maximum_pages.filter(|&m| m > limit) {
            return Err(format!(
                "Wasm64 module declares a maximum memory of {declared} wasm pages, \
                 more than the {limit} pages (6 GiB) a wasm64 canister may use"
            ));
        }
        if pre.initial_pages > limit {
            return Err(format!(
                "Wasm64 module declares an initial memory of {} wasm pages, \
                 more than the {limit} pages (6 GiB) a wasm64 canister may use",
                pre.initial_pages
            ));
        }
    }
    if !pre.info.other_imports.is_empty() {
        let names: Vec<String> = pre.info.other_imports.iter().map(|(m, n)| format!("{m}.{n}")).collect();
        return Err(format!(
            "Wasm module has an invalid import section. Only functions may be imported, \
             but the module imports {}",
            names.join(", ")
        ));
    }
    pre.info.mutable_global_exports = pre
        .mutable_globals
        .iter()
        .map(|i| format!("{GLOBAL_EXPORT_PREFIX}{i}"))
        .collect();
    // Saved and restored with the module's own mutable globals.
    pre.info.mutable_global_exports.push(HEAP_PAGES_EXPORT.to_string());
    Ok(pre)
}

struct Rewriter<'p> {
    pre: &'p Prescan,
    layout: Option<tracker::Layout>,
    profile: bool,
    /// The profile global of the function being rewritten (profiling only).
    current_profile_global: Option<u32>,
    next_defined_func: usize,
    globals_emitted: bool,
    exports_emitted: bool,
}

/// Sections that come after the global section in a module.
fn after_globals(s: Option<SectionId>) -> bool {
    matches!(
        s,
        None | Some(SectionId::Export)
            | Some(SectionId::Start)
            | Some(SectionId::Element)
            | Some(SectionId::DataCount)
            | Some(SectionId::Code)
            | Some(SectionId::Data)
    )
}

/// Sections that come after the export section in a module.
fn after_exports(s: Option<SectionId>) -> bool {
    after_globals(s) && s != Some(SectionId::Export)
}

impl Rewriter<'_> {
    fn add_counter_global(&mut self, globals: &mut GlobalSection) {
        globals.global(
            GlobalType {
                val_type: ValType::I64,
                mutable: true,
                shared: false,
            },
            &ConstExpr::i64_const(COUNTER_INIT),
        );
        // The logical heap size, of the address type (`memory.size`'s).
        let initial_pages = match self.pre.memory64 {
            true => ConstExpr::i64_const(self.pre.initial_pages as i64),
            false => ConstExpr::i32_const(self.pre.initial_pages as i32),
        };
        globals.global(
            GlobalType {
                val_type: self.pre.addr().ty(),
                mutable: true,
                shared: false,
            },
            &initial_pages,
        );
        if self.profile {
            for _ in &self.pre.defined_func_types {
                globals.global(
                    GlobalType {
                        val_type: ValType::I64,
                        mutable: true,
                        shared: false,
                    },
                    &ConstExpr::i64_const(0),
                );
            }
        }
        if self.layout.is_some() {
            for _ in Var::ALL {
                globals.global(
                    GlobalType {
                        val_type: ValType::I64,
                        mutable: true,
                        shared: false,
                    },
                    &ConstExpr::i64_const(0),
                );
            }
        }
        self.globals_emitted = true;
    }

    fn add_exports(&mut self, exports: &mut ExportSection) {
        exports.export(COUNTER_EXPORT, ExportKind::Global, self.pre.counter_index());
        exports.export(HEAP_PAGES_EXPORT, ExportKind::Global, self.pre.heap_pages_index());
        if self.pre.info.has_memory {
            exports.export(MEMORY_EXPORT, ExportKind::Memory, 0);
        }
        if self.pre.info.has_table {
            exports.export(TABLE_EXPORT, ExportKind::Table, 0);
        }
        for (index, name) in self
            .pre
            .mutable_globals
            .iter()
            .zip(&self.pre.info.mutable_global_exports)
        {
            exports.export(name, ExportKind::Global, *index);
        }
        if self.profile {
            for (defined, func) in self.pre.info.profiled_functions.iter().enumerate() {
                let name = format!("{PROFILE_EXPORT_PREFIX}{func}");
                exports.export(&name, ExportKind::Global, self.pre.profile_global(defined));
            }
        }
        if let Some(l) = self.layout {
            exports.export(tracker::OUT_OF_INSTRUCTIONS_EXPORT, ExportKind::Func, l.ooi);
            for g in Var::ALL {
                exports.export(&g.export_name(), ExportKind::Global, l.global(g));
            }
            if l.track_pages {
                exports.export(tracker::PAGES_EXPORT, ExportKind::Memory, l.pages_memory);
            }
        }
        self.exports_emitted = true;
    }

    fn charge(&self, f: &mut Function, amount: u64) {
        let counter = self.pre.counter_index();
        f.instruction(&Instruction::GlobalGet(counter));
        f.instruction(&Instruction::I64Const(amount as i64));
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::GlobalSet(counter));
        if let Some(p) = self.current_profile_global {
            f.instruction(&Instruction::GlobalGet(p));
            f.instruction(&Instruction::I64Const(amount as i64));
            f.instruction(&Instruction::I64Add);
            f.instruction(&Instruction::GlobalSet(p));
        }
    }

    fn check(&self, f: &mut Function) {
        let counter = self.pre.counter_index();
        f.instruction(&Instruction::GlobalGet(counter));
        f.instruction(&Instruction::I64Const(0));
        f.instruction(&Instruction::I64LtS);
        f.instruction(&Instruction::If(BlockType::Empty));
        match self.layout {
            Some(l) => f.instruction(&Instruction::Call(l.ooi)),
            None => f.instruction(&Instruction::Unreachable),
        };
        f.instruction(&Instruction::End);
    }

    /// Charges the byte count on top of the stack (kept there) to the
    /// counter; `scratch` is a local of its type (`wide`: i64, else i32).
    fn charge_dynamic(&self, f: &mut Function, scratch: u32, wide: bool) {
        let counter = self.pre.counter_index();
        let widen = |f: &mut Function| {
            if !wide {
                f.instruction(&Instruction::I64ExtendI32U);
            }
        };
        f.instruction(&Instruction::LocalTee(scratch));
        f.instruction(&Instruction::GlobalGet(counter));
        f.instruction(&Instruction::LocalGet(scratch));
        widen(f);
        f.instruction(&Instruction::I64Sub);
        f.instruction(&Instruction::GlobalSet(counter));
        if let Some(p) = self.current_profile_global {
            f.instruction(&Instruction::GlobalGet(p));
            f.instruction(&Instruction::LocalGet(scratch));
            widen(f);
            f.instruction(&Instruction::I64Add);
            f.instruction(&Instruction::GlobalSet(p));
        }
    }
}

impl Rewriter<'_> {
    /// `memory.size` as the logical size.
    fn memory_size(&self, f: &mut Function) {
        f.instruction(&Instruction::GlobalGet(self.pre.heap_pages_index()));
    }

    /// `memory.grow` on the logical size: `(n) -> old size or -1`, growing
    /// the wasmtime memory only beyond the pages it already has. Growing
    /// beyond the mode's heap limit (4 GiB, or 6 GiB for wasm64, see
    /// [`WasmExecutionMode::max_heap_bytes`]) returns -1, as on the replica.
    fn memory_grow(&self, f: &mut Function, n: u32) {
        let pages = self.pre.heap_pages_index();
        let a = self.pre.addr();
        let max_pages = self.pre.info.mode.max_heap_pages() as i64;
        let new_size = |f: &mut Function| {
            f.instruction(&Instruction::GlobalGet(pages));
            f.instruction(&Instruction::LocalGet(n));
            f.instruction(&a.add());
        };
        f.instruction(&Instruction::LocalSet(n));
        f.instruction(&Instruction::Block(BlockType::Result(a.ty())));
        // Beyond the heap limit: fail.
        if a.memory64 {
            // n > max - pages (pages <= max), which no n can wrap.
            f.instruction(&Instruction::LocalGet(n));
            f.instruction(&Instruction::I64Const(max_pages));
            f.instruction(&Instruction::GlobalGet(pages));
            f.instruction(&Instruction::I64Sub);
        } else {
            f.instruction(&Instruction::GlobalGet(pages));
            f.instruction(&Instruction::I64ExtendI32U);
            f.instruction(&Instruction::LocalGet(n));
            f.instruction(&Instruction::I64ExtendI32U);
            f.instruction(&Instruction::I64Add);
            f.instruction(&Instruction::I64Const(max_pages));
        }
        f.instruction(&Instruction::I64GtU);
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&a.konst(-1));
        f.instruction(&Instruction::Br(1));
        f.instruction(&Instruction::End);
        // More than the wasmtime memory has: grow it by the difference.
        new_size(f);
        f.instruction(&Instruction::MemorySize(0));
        f.instruction(&a.gt_u());
        f.instruction(&Instruction::If(BlockType::Empty));
        new_size(f);
        f.instruction(&Instruction::MemorySize(0));
        f.instruction(&a.sub());
        f.instruction(&Instruction::MemoryGrow(0));
        f.instruction(&a.konst(-1));
        f.instruction(&a.eq());
        f.instruction(&Instruction::If(BlockType::Empty));
        f.instruction(&a.konst(-1));
        f.instruction(&Instruction::Br(2));
        f.instruction(&Instruction::End);
        f.instruction(&Instruction::End);
        // The old size is the result; the logical size grows.
        f.instruction(&Instruction::GlobalGet(pages));
        new_size(f);
        f.instruction(&Instruction::GlobalSet(pages));
        f.instruction(&Instruction::End);
    }
}

fn is_bulk(op: &Operator<'_>) -> bool {
    matches!(
        op,
        Operator::MemoryCopy { .. } | Operator::MemoryFill { .. } | Operator::MemoryInit { .. }
    )
}

/// Whether the byte count of bulk op `op` is an i64: `memory.copy` and
/// `memory.fill` of a wasm64 module (`CostOperandOnStack::X64Bit` in the
/// replica's instrumentation); `memory.init`'s is always i32.
fn bulk_len_is_i64(op: &Operator<'_>, memory64: bool) -> bool {
    memory64 && matches!(op, Operator::MemoryCopy { .. } | Operator::MemoryFill { .. })
}

/// Splits a function body into basic blocks: returns, per operator index,
/// the charge of the block starting there (None if no block starts there).
pub(crate) fn block_charges(ops: &[Operator<'_>], memory64: bool) -> Vec<Option<u64>> {
    let mut charges: Vec<Option<u64>> = vec![None; ops.len()];
    let mut current = 0usize;
    if !ops.is_empty() {
        charges[0] = Some(weights::FUNCTION_ENTRY);
    }
    for (i, op) in ops.iter().enumerate() {
        if let Some(c) = charges[current].as_mut() {
            *c += weights::weight(op, memory64);
        }
        if weights::ends_block(op) && i + 1 < ops.len() {
            current = i + 1;
            charges[current] = Some(0);
        }
    }
    charges
}

impl Reencode for Rewriter<'_> {
    type Error = std::convert::Infallible;

    /// A wasm64 heap gets the replica's maximum where it declares none
    /// (larger ones were refused by [`prescan`]), as the replica's
    /// instrumentation caps it: `memory.grow` beyond it fails.
    fn memory_type(
        &mut self,
        memory_ty: wasmparser::MemoryType,
    ) -> Result<wasm_encoder::MemoryType, reencode::Error<Self::Error>> {
        let mut ty = reencode::utils::memory_type(self, memory_ty);
        if ty.memory64 {
            let limit = WasmExecutionMode::Wasm64.max_heap_pages();
            ty.maximum = Some(ty.maximum.unwrap_or(limit).min(limit));
        }
        Ok(ty)
    }

    fn parse_type_section(
        &mut self,
        types: &mut wasm_encoder::TypeSection,
        section: wasmparser::TypeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_type_section(self, types, section)?;
        if self.layout.is_some() {
            let addr = self.pre.addr().ty();
            types.ty().function([], []);
            types.ty().function([addr, addr, ValType::I32], []);
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_function_section(self, functions, section)?;
        if let Some(l) = self.layout {
            functions.function(l.ooi_type);
            functions.function(l.touch_type);
        }
        Ok(())
    }

    fn parse_memory_section(
        &mut self,
        memories: &mut wasm_encoder::MemorySection,
        section: wasmparser::MemorySectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_memory_section(self, memories, section)?;
        if let Some(l) = self.layout.filter(|l| l.track_pages) {
            // One byte per wasm page of the largest heap (4 or 6 GiB).
            let map_pages = l.max_heap_pages.div_ceil(crate::types::WASM_PAGE_SIZE);
            memories.memory(wasm_encoder::MemoryType {
                minimum: map_pages,
                maximum: Some(map_pages),
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_code_section(self, code, section)?;
        if let Some(l) = self.layout {
            code.function(&tracker::out_of_instructions(&l));
            code.function(&tracker::touch_range(&l));
        }
        Ok(())
    }

    fn parse_global_section(
        &mut self,
        globals: &mut GlobalSection,
        section: wasmparser::GlobalSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_global_section(self, globals, section)?;
        self.add_counter_global(globals);
        Ok(())
    }

    fn parse_export_section(
        &mut self,
        exports: &mut ExportSection,
        section: wasmparser::ExportSectionReader<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        reencode::utils::parse_export_section(self, exports, section)?;
        self.add_exports(exports);
        Ok(())
    }

    fn intersperse_section_hook(
        &mut self,
        module: &mut wasm_encoder::Module,
        _after: Option<SectionId>,
        before: Option<SectionId>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        // Modules without a global or export section still need ours.
        if !self.globals_emitted && after_globals(before) {
            let mut globals = GlobalSection::new();
            self.add_counter_global(&mut globals);
            module.section(&globals);
        }
        if !self.exports_emitted && after_exports(before) {
            let mut exports = ExportSection::new();
            self.add_exports(&mut exports);
            module.section(&exports);
        }
        Ok(())
    }

    fn parse_function_body(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), reencode::Error<Self::Error>> {
        let type_index = self.pre.defined_func_types[self.next_defined_func];
        self.current_profile_global = self.profile.then(|| self.pre.profile_global(self.next_defined_func));
        self.next_defined_func += 1;
        let mut local_count = self.pre.type_params[type_index as usize];
        let mut locals = Vec::new();
        for pair in func.get_locals_reader()? {
            let (count, ty) = pair?;
            local_count += count;
            locals.push((count, self.val_type(ty)?));
        }
        let mut reader = func.get_operators_reader()?;
        let mut ops = Vec::new();
        while !reader.eof() {
            ops.push(reader.read()?);
        }
        // Scratch locals, added only when the function needs them.
        let memory64 = self.pre.memory64;
        let mut scratch_if = |needed: bool, ty: ValType| {
            needed.then(|| {
                locals.push((1, ty));
                local_count += 1;
                local_count - 1
            })
        };
        let scratch = scratch_if(
            ops.iter().any(|op| is_bulk(op) && !bulk_len_is_i64(op, memory64)),
            ValType::I32,
        );
        let scratch64 = scratch_if(ops.iter().any(|op| bulk_len_is_i64(op, memory64)), ValType::I64);
        let grow_scratch = scratch_if(
            ops.iter().any(|op| matches!(op, Operator::MemoryGrow { .. })),
            self.pre.addr().ty(),
        );
        let tracking = self.layout.filter(|l| l.track_pages);
        let page_scratch = match tracking {
            Some(_) if ops.iter().any(|op| tracker::access_of(op).is_some()) => {
                let (s, decls) = tracker::Scratch::new(local_count, self.pre.addr());
                locals.extend(decls);
                Some(s)
            }
            _ => None,
        };
        let charges = block_charges(&ops, self.pre.memory64);

        let mut f = Function::new(locals);
        let mut after_loop = false;
        for (i, op) in ops.into_iter().enumerate() {
            if let Some(charge) = charges[i] {
                if charge > 0 {
                    self.charge(&mut f, charge);
                }
            }
            if i == 0 || after_loop {
                self.check(&mut f);
            }
            after_loop = matches!(op, Operator::Loop { .. });
            if let (Some(l), Some(s), Some(access)) = (tracking, page_scratch.as_ref(), tracker::access_of(&op)) {
                tracker::track(&mut f, &l, s, access);
            }
            if is_bulk(&op) {
                let wide = bulk_len_is_i64(&op, memory64);
                if let Some(scratch) = if wide { scratch64 } else { scratch } {
                    self.charge_dynamic(&mut f, scratch, wide);
                }
            }
            match (&op, grow_scratch) {
                (Operator::MemorySize { mem: 0 }, _) => self.memory_size(&mut f),
                (Operator::MemoryGrow { mem: 0 }, Some(n)) => self.memory_grow(&mut f, n),
                _ => {
                    f.instruction(&self.instruction(op)?);
                }
            }
        }
        code.function(&f);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops_of(wat_src: &str) -> Vec<Operator<'static>> {
        let wasm: &'static [u8] = Box::leak(wat::parse_str(wat_src).unwrap().into_boxed_slice());
        for payload in wasmparser::Parser::new(0).parse_all(wasm) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut r = body.get_operators_reader().unwrap();
                let mut ops = Vec::new();
                while !r.eof() {
                    ops.push(r.read().unwrap());
                }
                return ops;
            }
        }
        panic!("no code");
    }

    #[test]
    fn straight_line_function_is_one_block() {
        // local.get 1 + local.get 1 + i32.add 1 + end 0, + entry 1 = 4
        let ops = ops_of(r#"(module (func (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))"#);
        let charges = block_charges(&ops, false);
        assert_eq!(charges[0], Some(4));
        assert_eq!(charges.iter().flatten().count(), 1);
    }

    #[test]
    fn loop_body_is_its_own_block() {
        let ops = ops_of(
            r#"(module (func (param i32)
                 (loop $l
                   local.get 0
                   i32.const 1
                   i32.sub
                   local.tee 0
                   br_if $l)))"#,
        );
        let charges = block_charges(&ops, false);
        // Entry block: entry 1 + loop 0 = 1.
        assert_eq!(charges[0], Some(1));
        // Loop body: get 1, const 1, sub 1, tee 1, br_if 2 = 6.
        assert_eq!(charges[1], Some(6));
    }

    #[test]
    fn rejects_garbage_and_relaxed_simd() {
        assert!(instrument(b"definitely not wasm").is_err());
        let relaxed = wat::parse_str(
            r#"(module (func (param v128 v128) (result v128)
                local.get 0 local.get 1 f32x4.relaxed_min))"#,
        )
        .unwrap();
        let err = instrument(&relaxed).unwrap_err();
        assert!(err.contains("relaxed"), "{err}");
        let threads = wat::parse_str(r#"(module (memory 1 1 shared))"#).unwrap();
        let err = instrument(&threads).unwrap_err();
        assert!(err.contains("thread"), "{err}");
    }

    #[test]
    fn wasm64_heaps_get_the_6_gib_maximum() {
        let maximum = |wat_src: &str| {
            let out = instrument(&wat::parse_str(wat_src).unwrap()).unwrap();
            let mut maxima = Vec::new();
            for payload in wasmparser::Parser::new(0).parse_all(&out.wasm) {
                if let Payload::MemorySection(r) = payload.unwrap() {
                    maxima.extend(r.into_iter().map(|m| m.unwrap().maximum));
                }
            }
            (out.info.mode, maxima[0])
        };
        let func = r#"(func (export "f") (drop (memory.grow (i64.const 1))))"#;
        assert_eq!(
            maximum(&format!("(module (memory i64 1) {func})")),
            (WasmExecutionMode::Wasm64, Some(98_304))
        );
        assert_eq!(
            maximum(&format!("(module (memory i64 1 10) {func})")),
            (WasmExecutionMode::Wasm64, Some(10))
        );
        assert_eq!(maximum("(module (memory 1))"), (WasmExecutionMode::Wasm32, None));
        let err = instrument(&wat::parse_str("(module (memory i64 1 98305))").unwrap()).unwrap_err();
        assert!(err.contains("98305"), "{err}");
    }

    #[test]
    fn module_without_globals_or_exports_gets_both() {
        let wasm = wat::parse_str(r#"(module (func nop))"#).unwrap();
        let out = instrument(&wasm).unwrap();
        let mut exports = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&out.wasm) {
            if let Payload::ExportSection(r) = payload.unwrap() {
                for e in r {
                    exports.push(e.unwrap().name.to_string());
                }
            }
        }
        assert_eq!(exports[0], COUNTER_EXPORT);
        assert!(exports.contains(&HEAP_PAGES_EXPORT.to_string()));
        assert!(exports.contains(&tracker::OUT_OF_INSTRUCTIONS_EXPORT.to_string()));
        assert!(
            !exports.contains(&tracker::PAGES_EXPORT.to_string()),
            "no memory, no page map"
        );
    }
}
