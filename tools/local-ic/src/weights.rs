//! The replica's per-instruction weights, as dfinity/ic's
//! `rs/embedders/src/wasm_utils/instrumentation.rs` assigns them.
//!
//! Only the weight of each operator lives here; where the charges are placed
//! (basic blocks, function entry, bulk-memory byte counts) is decided by
//! [`crate::instrument`].

use wasmparser::Operator;

/// Static charge for `memory.copy` / `memory.fill` / `memory.init`; the byte
/// count is charged on top at run time.
pub const BULK_MEMORY_BASE: u64 = 100;

/// Extra charge at every function entry (on top of its first block).
pub const FUNCTION_ENTRY: u64 = 1;

/// Weight of one operator. `memory64` selects the wasm64 cost of loads and
/// stores (2 instead of 1).
pub fn weight(op: &Operator<'_>, memory64: bool) -> u64 {
    use Operator::*;
    let mem_access = if memory64 { 2 } else { 1 };
    match op {
        // Structure: free.
        Block { .. } | Loop { .. } | Else | End => 0,

        // Branches and calls.
        Br { .. } | BrIf { .. } | BrTable { .. } | If { .. } => 2,
        Call { .. } => 5,
        CallIndirect { .. } => 10,
        ReturnCall { .. } => 3,
        ReturnCallIndirect { .. } => 10,

        // Globals.
        GlobalGet { .. } | GlobalSet { .. } => 2,

        // Integer division and remainder.
        I32DivS | I32DivU | I32RemS | I32RemU | I64DivS | I64DivU | I64RemS | I64RemU => 10,

        // Scalar floats.
        F32Add | F32Sub | F32Mul | F64Add | F64Sub | F64Mul => 2,
        F32Ceil | F32Floor | F32Trunc | F32Nearest | F64Ceil | F64Floor | F64Trunc | F64Nearest => 2,
        F32Div => 3,
        F64Div => 5,
        F32Sqrt => 5,
        F64Sqrt => 8,
        F32Min | F32Max | F64Min | F64Max => 18,
        F32Eq | F32Ne | F32Lt | F32Gt | F32Le | F32Ge | F64Eq | F64Ne | F64Lt | F64Gt | F64Le | F64Ge => 3,
        F32ConvertI32S | F32ConvertI64S | F64ConvertI32S | F64ConvertI64S => 3,
        F32ConvertI32U | F32ConvertI64U | F64ConvertI32U | F64ConvertI64U => 16,
        I32TruncF32S | I32TruncF32U | I32TruncF64S | I32TruncF64U | I64TruncF32S | I64TruncF32U | I64TruncF64S
        | I64TruncF64U | I32TruncSatF32S | I32TruncSatF32U | I32TruncSatF64S | I32TruncSatF64U | I64TruncSatF32S
        | I64TruncSatF32U | I64TruncSatF64S | I64TruncSatF64U => 20,

        // Memory management.
        MemorySize { .. } => 20,
        MemoryGrow { .. } | TableGrow { .. } => 300,
        MemoryCopy { .. } | MemoryFill { .. } | MemoryInit { .. } => BULK_MEMORY_BASE,

        // Scalar loads and stores.
        I32Load { .. }
        | I64Load { .. }
        | F32Load { .. }
        | F64Load { .. }
        | I32Load8S { .. }
        | I32Load8U { .. }
        | I32Load16S { .. }
        | I32Load16U { .. }
        | I64Load8S { .. }
        | I64Load8U { .. }
        | I64Load16S { .. }
        | I64Load16U { .. }
        | I64Load32S { .. }
        | I64Load32U { .. }
        | I32Store { .. }
        | I64Store { .. }
        | F32Store { .. }
        | F64Store { .. }
        | I32Store8 { .. }
        | I32Store16 { .. }
        | I64Store8 { .. }
        | I64Store16 { .. }
        | I64Store32 { .. } => mem_access,

        // SIMD loads and stores.
        V128Load { .. }
        | V128Load8x8S { .. }
        | V128Load8x8U { .. }
        | V128Load16x4S { .. }
        | V128Load16x4U { .. }
        | V128Load32x2S { .. }
        | V128Load32x2U { .. }
        | V128Load8Splat { .. }
        | V128Load16Splat { .. }
        | V128Load32Splat { .. }
        | V128Load64Splat { .. }
        | V128Load32Zero { .. }
        | V128Load64Zero { .. }
        | V128Store { .. }
        | V128Load8Lane { .. }
        | V128Load16Lane { .. }
        | V128Load32Lane { .. }
        | V128Load64Lane { .. }
        | V128Store8Lane { .. }
        | V128Store16Lane { .. }
        | V128Store32Lane { .. }
        | V128Store64Lane { .. } => mem_access,

        // SIMD arithmetic with a non-unit weight.
        F32x4Add | F32x4Sub | F32x4Mul => 2,
        I32x4Mul => 2,
        I8x16Shl | I8x16ShrS | I8x16ShrU | I16x8Shl | I16x8ShrS | I16x8ShrU | I32x4Shl | I32x4ShrS | I32x4ShrU
        | I64x2Shl | I64x2ShrS | I64x2ShrU => 2,
        I8x16Shuffle { .. } => 3,
        F32x4Div => 10,
        F32x4Sqrt => 5,
        F32x4Min | F32x4Max => 4,

        // Constants, locals, select/drop/nop/return, integer ALU ops, the
        // remaining SIMD ops and anything not listed.
        _ => 1,
    }
}

/// Whether `op` ends the current basic block: the block's charge includes
/// this operator and a new block starts right after it.
pub fn ends_block(op: &Operator<'_>) -> bool {
    use Operator::*;
    matches!(
        op,
        Br { .. }
            | BrIf { .. }
            | BrTable { .. }
            | Else
            | End
            | Return
            | Unreachable
            | Loop { .. }
            | If { .. }
            | ReturnCall { .. }
            | ReturnCallIndirect { .. }
            | Throw { .. }
            | ThrowRef
            | TryTable { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spot_checks() {
        assert_eq!(weight(&Operator::I32Add, false), 1);
        assert_eq!(weight(&Operator::I64DivU, false), 10);
        assert_eq!(weight(&Operator::F64Div, false), 5);
        assert_eq!(weight(&Operator::F32x4Mul, false), 2);
        assert_eq!(weight(&Operator::I32x4DotI16x8S, false), 1);
        assert_eq!(weight(&Operator::F32x4Div, false), 10);
        assert_eq!(weight(&Operator::Call { function_index: 0 }, false), 5);
        assert_eq!(weight(&Operator::MemoryGrow { mem: 0 }, false), 300);
        let wasm = wat::parse_str("(module (memory 1) (func (result i32) i32.const 0 i32.load))").unwrap();
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                ops.read().unwrap(); // i32.const
                let load = ops.read().unwrap();
                assert_eq!(weight(&load, false), 1);
                assert_eq!(weight(&load, true), 2);
            }
        }
    }
}
