//! Wasm code the rewrite adds to every module: the slice handler and the
//! page tracker. Both are plain wasm functions appended after the module's
//! own (so no function index moves) and run uncounted, like the replica's
//! injected code.
//!
//! **Why in wasm.** The replica charges page accesses from its SIGSEGV
//! handler straight into the instruction counter. Here the counter is a
//! wasm global that Cranelift may keep in a register or forward from its
//! last store across heap accesses (heap and vmctx are different alias
//! regions), so a signal handler writing it could be overwritten and the
//! charge lost. Instead every heap load and store is preceded by an inline
//! test of a byte map, one byte per wasm page (bit 1 accessed, bit 2 dirty)
//! in a second, private memory ([`PAGES_EXPORT`]); a page whose bits lack
//! what the access needs calls [`touch_range`], which sets them and
//! subtracts the page charge from the counter in the same wasm code that
//! counts instructions. The charge is therefore exact (every first access
//! and first write of a wasm page, unaligned accesses spanning two pages and
//! bulk `memory.copy/fill/init` ranges included), in-band, and seen by the
//! next limit check and by `performance_counter`. Host-side heap accesses of
//! system-API calls update the same map ([`crate::system_api`]).
//!
//! **Wasm64.** Heap addresses, the bulk ops' lengths (not `memory.init`'s
//! source and length, which stay i32) and [`touch_range`]'s range are i64
//! ([`Addr`]); the map covers the 6 GiB heap (98,304 bytes in two wasm
//! pages). An address beyond the heap limit is not charged: the access
//! traps anyway.
//!
//! **Slices.** The counter check at function entries and loop headers calls
//! [`out_of_instructions`] when the counter is negative, which applies the
//! replica's rule (`rs/canister_sandbox/src/dts.rs`, `try_pause` and
//! `State::update`): on the last slice the message fails with
//! `InstructionLimitExceeded`; if the overshoot ("carry-over") leaves the
//! next slice nothing, `SliceOverrun`; otherwise the next slice gets the
//! maximum minus the carry-over, clamped to what is left of the message's
//! limit. Failures set [`Var::Fail`] and execute `unreachable`; the host
//! words the error.

use wasm_encoder::{BlockType, Function, Instruction as I, MemArg, ValType};

/// Export name of the page map memory (present when pages are tracked).
pub const PAGES_EXPORT: &str = "__local_ic_pages";
/// Export name of [`out_of_instructions`].
pub const OUT_OF_INSTRUCTIONS_EXPORT: &str = "__local_ic_out_of_instructions";
/// Prefix of the export names of the [`Var`]s.
pub const GLOBAL_PREFIX: &str = "__local_ic_dts_";

/// Page map bits.
pub const ACCESSED: u8 = 1;
pub const DIRTY: u8 = 2;

/// The i64 globals the added code keeps, in their order after the counter
/// (and the profile globals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// Limit the current slice started with (the counter's start value).
    SliceLimit,
    /// Instructions of the finished slices.
    Executed,
    /// The message's limit.
    Total,
    /// Largest slice.
    MaxSlice,
    SlicesLeft,
    /// Slices started so far (1 from the message's start).
    Slices,
    /// 0, or why the message failed: [`FAIL_LIMIT`] or [`FAIL_OVERRUN`].
    Fail,
    /// Instructions of the overrunning slice ([`FAIL_OVERRUN`]).
    FailInstructions,
    /// In-band page charges of this message (wasm code's; the host adds its own).
    PageInstructions,
    /// 1 if writes are charged as dirty (update-like messages), 0 for queries.
    TrackDirty,
    /// Charge for the first access to a wasm page.
    AccessCost,
    /// Charge for the first write to a wasm page (on top of the access).
    DirtyCost,
}

pub const FAIL_LIMIT: i64 = 1;
pub const FAIL_OVERRUN: i64 = 2;

impl Var {
    pub const ALL: [Var; 12] = [
        Var::SliceLimit,
        Var::Executed,
        Var::Total,
        Var::MaxSlice,
        Var::SlicesLeft,
        Var::Slices,
        Var::Fail,
        Var::FailInstructions,
        Var::PageInstructions,
        Var::TrackDirty,
        Var::AccessCost,
        Var::DirtyCost,
    ];

    pub fn export_name(self) -> String {
        format!("{GLOBAL_PREFIX}{self:?}")
    }
}

/// Indices the added code refers to.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub counter: u32,
    /// Index of the first [`Var`].
    pub first_global: u32,
    /// Function index of [`touch_range`].
    pub touch: u32,
    /// Memory index of the page map.
    pub pages_memory: u32,
    /// Whether heap accesses are tracked (the module has a memory and the
    /// charges are the tracker's).
    pub track_pages: bool,
    /// Function index of [`out_of_instructions`].
    pub ooi: u32,
    /// Type indices of the two added functions.
    pub ooi_type: u32,
    pub touch_type: u32,
    /// The heap's address type (wasm32 or wasm64).
    pub addr: Addr,
    /// Most heap pages of the module's mode (the page map's length).
    pub max_heap_pages: u64,
}

/// Instructions on heap addresses and lengths: i32 in wasm32, i64 in wasm64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub memory64: bool,
}

impl Addr {
    pub fn ty(self) -> ValType {
        if self.memory64 {
            ValType::I64
        } else {
            ValType::I32
        }
    }

    pub fn konst(self, v: i64) -> I<'static> {
        if self.memory64 {
            I::I64Const(v)
        } else {
            I::I32Const(v as i32)
        }
    }

    pub fn add(self) -> I<'static> {
        if self.memory64 {
            I::I64Add
        } else {
            I::I32Add
        }
    }

    pub fn sub(self) -> I<'static> {
        if self.memory64 {
            I::I64Sub
        } else {
            I::I32Sub
        }
    }

    pub fn gt_u(self) -> I<'static> {
        if self.memory64 {
            I::I64GtU
        } else {
            I::I32GtU
        }
    }

    pub fn eq(self) -> I<'static> {
        if self.memory64 {
            I::I64Eq
        } else {
            I::I32Eq
        }
    }

    pub fn eqz(self) -> I<'static> {
        if self.memory64 {
            I::I64Eqz
        } else {
            I::I32Eqz
        }
    }

    pub fn shr_u(self) -> I<'static> {
        if self.memory64 {
            I::I64ShrU
        } else {
            I::I32ShrU
        }
    }

    /// Widens the address on the stack to i64 (a no-op in wasm64).
    pub fn to_i64(self, f: &mut Function) {
        if !self.memory64 {
            f.instruction(&I::I64ExtendI32U);
        }
    }

    /// Narrows the (page number) on the stack to i32 (a no-op in wasm32).
    pub fn to_i32(self, f: &mut Function) {
        if self.memory64 {
            f.instruction(&I::I32WrapI64);
        }
    }
}

impl Layout {
    pub fn global(&self, g: Var) -> u32 {
        self.first_global + Var::ALL.iter().position(|x| *x == g).unwrap_or(0) as u32
    }
}

fn map_arg(layout: &Layout) -> MemArg {
    MemArg {
        offset: 0,
        align: 0,
        target: wasm_encoder::MemArgTarget::Memory(layout.pages_memory),
        ordering: None,
    }
}

/// `local = clamp(MaxSlice - carry, 0, max(left, 0))`.
fn next_slice_limit(f: &mut Function, l: &Layout, carry: u32, left: u32, out: u32) {
    // x = max(MaxSlice - carry, 0)
    f.instruction(&I::GlobalGet(l.global(Var::MaxSlice)));
    f.instruction(&I::LocalGet(carry));
    f.instruction(&I::I64Sub);
    f.instruction(&I::LocalTee(out));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::LocalGet(out));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64GtS);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(out));
    // hi = max(left, 0); out = min(x, hi)
    f.instruction(&I::LocalGet(out));
    f.instruction(&I::LocalGet(left));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::LocalGet(left));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64GtS);
    f.instruction(&I::Select);
    f.instruction(&I::LocalTee(left));
    f.instruction(&I::LocalGet(out));
    f.instruction(&I::LocalGet(left));
    f.instruction(&I::I64LtS);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(out));
}

/// `left = Total - Executed`.
fn instructions_left(f: &mut Function, l: &Layout, left: u32) {
    f.instruction(&I::GlobalGet(l.global(Var::Total)));
    f.instruction(&I::GlobalGet(l.global(Var::Executed)));
    f.instruction(&I::I64Sub);
    f.instruction(&I::LocalSet(left));
}

fn fail(f: &mut Function, l: &Layout, code: i64) {
    f.instruction(&I::I64Const(code));
    f.instruction(&I::GlobalSet(l.global(Var::Fail)));
    f.instruction(&I::Unreachable);
}

/// `() -> ()`: called when the counter went negative (see the module docs).
pub fn out_of_instructions(l: &Layout) -> Function {
    let (newly, carry, left, next) = (0, 1, 2, 3);
    let mut f = Function::new([(4, ValType::I64)]);
    let c = l.counter;
    // newly = SliceLimit - counter
    f.instruction(&I::GlobalGet(l.global(Var::SliceLimit)));
    f.instruction(&I::GlobalGet(c));
    f.instruction(&I::I64Sub);
    f.instruction(&I::LocalSet(newly));
    instructions_left(&mut f, l, left);
    // Last slice: SliceLimit >= left || SlicesLeft <= 1.
    f.instruction(&I::GlobalGet(l.global(Var::SliceLimit)));
    f.instruction(&I::LocalGet(left));
    f.instruction(&I::I64GeS);
    f.instruction(&I::GlobalGet(l.global(Var::SlicesLeft)));
    f.instruction(&I::I64Const(1));
    f.instruction(&I::I64LeS);
    f.instruction(&I::I32Or);
    f.instruction(&I::If(BlockType::Empty));
    fail(&mut f, l, FAIL_LIMIT);
    f.instruction(&I::End);
    // carry = max(newly - SliceLimit, 0)
    f.instruction(&I::LocalGet(newly));
    f.instruction(&I::GlobalGet(l.global(Var::SliceLimit)));
    f.instruction(&I::I64Sub);
    f.instruction(&I::LocalTee(carry));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::LocalGet(carry));
    f.instruction(&I::I64Const(0));
    f.instruction(&I::I64GtS);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(carry));
    // Nothing left for the next slice: SliceOverrun.
    next_slice_limit(&mut f, l, carry, left, next);
    f.instruction(&I::LocalGet(next));
    f.instruction(&I::I64Eqz);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::LocalGet(newly));
    f.instruction(&I::GlobalSet(l.global(Var::FailInstructions)));
    fail(&mut f, l, FAIL_OVERRUN);
    f.instruction(&I::End);
    // Executed += newly; the next slice's limit from what is left now.
    f.instruction(&I::GlobalGet(l.global(Var::Executed)));
    f.instruction(&I::LocalGet(newly));
    f.instruction(&I::I64Add);
    f.instruction(&I::GlobalSet(l.global(Var::Executed)));
    instructions_left(&mut f, l, left);
    next_slice_limit(&mut f, l, carry, left, next);
    f.instruction(&I::LocalGet(next));
    f.instruction(&I::GlobalSet(l.global(Var::SliceLimit)));
    f.instruction(&I::LocalGet(next));
    f.instruction(&I::GlobalSet(c));
    for (g, delta) in [(Var::SlicesLeft, -1), (Var::Slices, 1)] {
        f.instruction(&I::GlobalGet(l.global(g)));
        f.instruction(&I::I64Const(delta));
        f.instruction(&I::I64Add);
        f.instruction(&I::GlobalSet(l.global(g)));
    }
    f.instruction(&I::End);
    f
}

/// `(start: I, len: I, need: i32) -> ()` (`I` the heap's [`Addr`] type):
/// gives every wasm page of the range the bits `need` (1 read, 3 write),
/// charging the first access and, where dirty pages are tracked, the first
/// write.
pub fn touch_range(l: &Layout) -> Function {
    let (start, len, need) = (0, 1, 2);
    let (page, last, bits, cost) = (3, 4, 5, 6);
    let mut f = Function::new([(2, ValType::I64), (1, ValType::I32), (1, ValType::I64)]);
    if !l.track_pages {
        // No page map: never called.
        f.instruction(&I::End);
        return f;
    }
    let map = map_arg(l);
    let a = l.addr;
    let last_page = l.max_heap_pages as i64 - 1;
    f.instruction(&I::LocalGet(len));
    f.instruction(&a.eqz());
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::Return);
    f.instruction(&I::End);
    // page = start >> 16; last = min((start + len - 1) >> 16, last heap page), unwrapped.
    f.instruction(&I::LocalGet(start));
    a.to_i64(&mut f);
    f.instruction(&I::I64Const(16));
    f.instruction(&I::I64ShrU);
    f.instruction(&I::LocalSet(page));
    f.instruction(&I::LocalGet(start));
    a.to_i64(&mut f);
    f.instruction(&I::LocalGet(len));
    a.to_i64(&mut f);
    f.instruction(&I::I64Add);
    f.instruction(&I::I64Const(1));
    f.instruction(&I::I64Sub);
    f.instruction(&I::I64Const(16));
    f.instruction(&I::I64ShrU);
    f.instruction(&I::LocalTee(last));
    f.instruction(&I::I64Const(last_page));
    f.instruction(&I::LocalGet(last));
    f.instruction(&I::I64Const(last_page));
    f.instruction(&I::I64LtU);
    f.instruction(&I::Select);
    f.instruction(&I::LocalSet(last));
    if a.memory64 {
        // A range starting beyond the heap limit traps when it is accessed:
        // nothing to charge (and its page is not in the map).
        f.instruction(&I::LocalGet(page));
        f.instruction(&I::LocalGet(last));
        f.instruction(&I::I64GtU);
        f.instruction(&I::If(BlockType::Empty));
        f.instruction(&I::Return);
        f.instruction(&I::End);
    }
    f.instruction(&I::Loop(BlockType::Empty));
    {
        f.instruction(&I::LocalGet(page));
        f.instruction(&I::I32WrapI64);
        f.instruction(&I::I32Load8U(map));
        f.instruction(&I::LocalTee(bits));
        f.instruction(&I::LocalGet(need));
        f.instruction(&I::I32And);
        f.instruction(&I::LocalGet(need));
        f.instruction(&I::I32Ne);
        f.instruction(&I::If(BlockType::Empty));
        {
            // cost = (not yet accessed ? AccessCost : 0)
            //      + (write && TrackDirty ? DirtyCost : 0)
            f.instruction(&I::GlobalGet(l.global(Var::AccessCost)));
            f.instruction(&I::I64Const(0));
            f.instruction(&I::LocalGet(bits));
            f.instruction(&I::I32Const(ACCESSED as i32));
            f.instruction(&I::I32And);
            f.instruction(&I::I32Eqz);
            f.instruction(&I::Select);
            f.instruction(&I::GlobalGet(l.global(Var::DirtyCost)));
            f.instruction(&I::I64Const(0));
            f.instruction(&I::LocalGet(need));
            f.instruction(&I::I32Const((ACCESSED | DIRTY) as i32));
            f.instruction(&I::I32Eq);
            f.instruction(&I::GlobalGet(l.global(Var::TrackDirty)));
            f.instruction(&I::I64Const(0));
            f.instruction(&I::I64Ne);
            f.instruction(&I::I32And);
            f.instruction(&I::Select);
            f.instruction(&I::I64Add);
            f.instruction(&I::LocalSet(cost));
            // bits |= need
            f.instruction(&I::LocalGet(page));
            f.instruction(&I::I32WrapI64);
            f.instruction(&I::LocalGet(bits));
            f.instruction(&I::LocalGet(need));
            f.instruction(&I::I32Or);
            f.instruction(&I::I32Store8(map));
            for (g, op) in [(l.counter, I::I64Sub), (l.global(Var::PageInstructions), I::I64Add)] {
                f.instruction(&I::GlobalGet(g));
                f.instruction(&I::LocalGet(cost));
                f.instruction(&op);
                f.instruction(&I::GlobalSet(g));
            }
        }
        f.instruction(&I::End);
        f.instruction(&I::LocalGet(page));
        f.instruction(&I::I64Const(1));
        f.instruction(&I::I64Add);
        f.instruction(&I::LocalTee(page));
        f.instruction(&I::LocalGet(last));
        f.instruction(&I::I64LeU);
        f.instruction(&I::BrIf(0));
    }
    f.instruction(&I::End);
    f.instruction(&I::End);
    f
}

/// What a memory instruction does to the heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `[addr] -> ...`: reads `size` bytes at `addr + offset`.
    Load { offset: u64, size: u32 },
    /// `[addr, value] -> ...`: writes (`write`) or reads (lane loads)
    /// `size` bytes; `value` is saved in a scratch local of type `ty`.
    WithValue {
        offset: u64,
        size: u32,
        ty: ValType,
        write: bool,
    },
    /// `memory.copy [dst, src, n]`.
    Copy,
    /// `memory.fill [dst, value: i32, n]`: writes `n` bytes at `dst`.
    Fill,
    /// `memory.init [dst, src: i32, n: i32]`: writes `n` bytes at `dst`
    /// (source and length stay i32 in wasm64).
    Init,
}

/// The heap access of `op`, if it is a memory-0 access.
pub fn access_of(op: &wasmparser::Operator<'_>) -> Option<Access> {
    use wasmparser::Operator as O;
    let load = |m: &wasmparser::MemArg, size: u32| Some(Access::Load { offset: m.offset, size });
    let with = |m: &wasmparser::MemArg, size: u32, ty: ValType, write: bool| {
        Some(Access::WithValue {
            offset: m.offset,
            size,
            ty,
            write,
        })
    };
    match op {
        O::I32Load8S { memarg } | O::I32Load8U { memarg } | O::I64Load8S { memarg } | O::I64Load8U { memarg } => {
            load(memarg, 1)
        }
        O::V128Load8Splat { memarg } => load(memarg, 1),
        O::I32Load16S { memarg } | O::I32Load16U { memarg } | O::I64Load16S { memarg } | O::I64Load16U { memarg } => {
            load(memarg, 2)
        }
        O::V128Load16Splat { memarg } => load(memarg, 2),
        O::I32Load { memarg } | O::F32Load { memarg } | O::I64Load32S { memarg } | O::I64Load32U { memarg } => {
            load(memarg, 4)
        }
        O::V128Load32Splat { memarg } | O::V128Load32Zero { memarg } => load(memarg, 4),
        O::I64Load { memarg } | O::F64Load { memarg } => load(memarg, 8),
        O::V128Load8x8S { memarg }
        | O::V128Load8x8U { memarg }
        | O::V128Load16x4S { memarg }
        | O::V128Load16x4U { memarg }
        | O::V128Load32x2S { memarg }
        | O::V128Load32x2U { memarg }
        | O::V128Load64Splat { memarg }
        | O::V128Load64Zero { memarg } => load(memarg, 8),
        O::V128Load { memarg } => load(memarg, 16),
        O::I32Store8 { memarg } => with(memarg, 1, ValType::I32, true),
        O::I32Store16 { memarg } => with(memarg, 2, ValType::I32, true),
        O::I32Store { memarg } => with(memarg, 4, ValType::I32, true),
        O::I64Store8 { memarg } => with(memarg, 1, ValType::I64, true),
        O::I64Store16 { memarg } => with(memarg, 2, ValType::I64, true),
        O::I64Store32 { memarg } => with(memarg, 4, ValType::I64, true),
        O::I64Store { memarg } => with(memarg, 8, ValType::I64, true),
        O::F32Store { memarg } => with(memarg, 4, ValType::F32, true),
        O::F64Store { memarg } => with(memarg, 8, ValType::F64, true),
        O::V128Store { memarg } => with(memarg, 16, ValType::V128, true),
        O::V128Load8Lane { memarg, .. } => with(memarg, 1, ValType::V128, false),
        O::V128Load16Lane { memarg, .. } => with(memarg, 2, ValType::V128, false),
        O::V128Load32Lane { memarg, .. } => with(memarg, 4, ValType::V128, false),
        O::V128Load64Lane { memarg, .. } => with(memarg, 8, ValType::V128, false),
        O::V128Store8Lane { memarg, .. } => with(memarg, 1, ValType::V128, true),
        O::V128Store16Lane { memarg, .. } => with(memarg, 2, ValType::V128, true),
        O::V128Store32Lane { memarg, .. } => with(memarg, 4, ValType::V128, true),
        O::V128Store64Lane { memarg, .. } => with(memarg, 8, ValType::V128, true),
        O::MemoryCopy { .. } => Some(Access::Copy),
        O::MemoryFill { .. } => Some(Access::Fill),
        O::MemoryInit { .. } => Some(Access::Init),
        _ => None,
    }
}

/// Scratch locals of a function with heap accesses.
#[derive(Debug, Clone, Copy)]
pub struct Scratch {
    /// Of the address type: address, effective address, and the three bulk
    /// operands.
    pub addr: u32,
    pub effective: u32,
    pub bulk: [u32; 3],
    /// i32 bulk operands: fill's value or init's source, init's length (in
    /// wasm32 the same locals as `bulk[1]` and `bulk[2]`).
    pub bulk32: [u32; 2],
    pub i32: u32,
    pub i64: u32,
    pub f32: u32,
    pub f64: u32,
    pub v128: u32,
}

impl Scratch {
    /// Allocates the locals from index `first` on; returns them and their
    /// declarations.
    pub fn new(first: u32, addr: Addr) -> (Self, Vec<(u32, ValType)>) {
        let bulk = [first + 2, first + 3, first + 4];
        let s = Self {
            addr: first,
            effective: first + 1,
            bulk,
            bulk32: if addr.memory64 {
                [first + 10, first + 11]
            } else {
                [bulk[1], bulk[2]]
            },
            i32: first + 5,
            i64: first + 6,
            f32: first + 7,
            f64: first + 8,
            v128: first + 9,
        };
        let mut decls = vec![
            (5, addr.ty()),
            (1, ValType::I32),
            (1, ValType::I64),
            (1, ValType::F32),
            (1, ValType::F64),
            (1, ValType::V128),
        ];
        if addr.memory64 {
            decls.push((2, ValType::I32));
        }
        (s, decls)
    }

    fn value(&self, ty: ValType) -> u32 {
        match ty {
            ValType::I64 => self.i64,
            ValType::F32 => self.f32,
            ValType::F64 => self.f64,
            ValType::V128 => self.v128,
            _ => self.i32,
        }
    }
}

/// Tests the page bits of `[effective, effective + size)` and calls
/// [`touch_range`] when they lack `need`.
fn check_pages(f: &mut Function, l: &Layout, s: &Scratch, size: u32, need: u8) {
    let map = map_arg(l);
    let a = l.addr;
    // In wasm64 a page number beyond the map wraps to some page of it: the
    // access traps anyway, and `touch_range` charges nothing for it.
    f.instruction(&I::LocalGet(s.effective));
    f.instruction(&a.konst(16));
    f.instruction(&a.shr_u());
    a.to_i32(f);
    f.instruction(&I::I32Load8U(map));
    if size > 1 {
        // An unaligned access may end in the next wasm page.
        f.instruction(&I::LocalGet(s.effective));
        f.instruction(&a.konst(size as i64 - 1));
        f.instruction(&a.add());
        f.instruction(&a.konst(16));
        f.instruction(&a.shr_u());
        a.to_i32(f);
        f.instruction(&I::I32Load8U(map));
        f.instruction(&I::I32And);
    }
    f.instruction(&I::I32Const(need as i32));
    f.instruction(&I::I32And);
    f.instruction(&I::I32Const(need as i32));
    f.instruction(&I::I32Ne);
    f.instruction(&I::If(BlockType::Empty));
    f.instruction(&I::LocalGet(s.effective));
    f.instruction(&a.konst(size as i64));
    f.instruction(&I::I32Const(need as i32));
    f.instruction(&I::Call(l.touch));
    f.instruction(&I::End);
}

/// `effective = addr + offset` (wrapping: an access beyond the heap limit
/// traps anyway).
fn effective_address(f: &mut Function, a: Addr, s: &Scratch, offset: u64) {
    f.instruction(&I::LocalTee(s.addr));
    f.instruction(&a.konst(offset as i64));
    f.instruction(&a.add());
    f.instruction(&I::LocalSet(s.effective));
}

/// Calls [`touch_range`] on `[start, start + len)`; `len_i32`: the length
/// local is an i32 even in wasm64 (`memory.init`).
fn touch_local(f: &mut Function, l: &Layout, start: u32, len: u32, len_i32: bool, need: u8) {
    f.instruction(&I::LocalGet(start));
    f.instruction(&I::LocalGet(len));
    if len_i32 && l.addr.memory64 {
        f.instruction(&I::I64ExtendI32U);
    }
    f.instruction(&I::I32Const(need as i32));
    f.instruction(&I::Call(l.touch));
}

/// Emits the page tracking of `access`, leaving the operand stack as it was.
pub fn track(f: &mut Function, l: &Layout, s: &Scratch, access: Access) {
    let write = ACCESSED | DIRTY;
    match access {
        Access::Load { offset, size } => {
            effective_address(f, l.addr, s, offset);
            check_pages(f, l, s, size, ACCESSED);
            f.instruction(&I::LocalGet(s.addr));
        }
        Access::WithValue {
            offset,
            size,
            ty,
            write: w,
        } => {
            let value = s.value(ty);
            f.instruction(&I::LocalSet(value));
            effective_address(f, l.addr, s, offset);
            check_pages(f, l, s, size, if w { write } else { ACCESSED });
            f.instruction(&I::LocalGet(s.addr));
            f.instruction(&I::LocalGet(value));
        }
        Access::Copy | Access::Fill | Access::Init => {
            // The operands' locals: [dst, src/value, n] by their types.
            let [dst, src, len] = match access {
                Access::Copy => s.bulk,
                Access::Fill => [s.bulk[0], s.bulk32[0], s.bulk[2]],
                _ => [s.bulk[0], s.bulk32[0], s.bulk32[1]],
            };
            let len_i32 = access == Access::Init;
            f.instruction(&I::LocalSet(len));
            f.instruction(&I::LocalSet(src));
            f.instruction(&I::LocalSet(dst));
            if access == Access::Copy {
                touch_local(f, l, src, len, false, ACCESSED);
            }
            touch_local(f, l, dst, len, len_i32, write);
            f.instruction(&I::LocalGet(dst));
            f.instruction(&I::LocalGet(src));
            f.instruction(&I::LocalGet(len));
        }
    }
}
