/* fastctc/detail/vec_undef.h: forgets one ISA's vector-layer macros (VT, V_*, FCTC_ISA, ...) so
 * the next ISA file can define its own.  Included at the end of each rows_<isa>.h;
 * deliberately without an include guard. */
#undef FCTC_ISA
#undef FCTC_VTARGET
#undef VT
#undef VM
#undef VW
#undef V_LOAD
#undef V_STORE
#undef V_STREAM
#undef V_SET1
#undef V_ADD
#undef V_SUB
#undef V_MUL
#undef V_DIV
#undef V_FMA
#undef V_MAX
#undef V_MIN
#undef V_ROUND
#undef V_FLOOR
#undef V_CMP_EQ
#undef V_CMP_LT
#undef V_CMP_GT
#undef V_CMP_NAN
#undef V_MASK_OR
#undef V_SELECT
#undef V_POW2
#undef V_POW2_MAGIC
#undef V_FREXP
#undef V_HMAX
#undef V_HSUM
