/* tests/c/xla_ffi_abi.c: checks, at compile time, that the XLA FFI declarations fastctc
 * writes by hand (pyx/fastctc/_xla_ffi.h) have the layout of XLA's own C API header
 * (xla/ffi/api/c_api.h from jaxlib's include folder, jax.ffi.include_dir()).  Compiled by
 * tests/test_jax.py with -I<that folder> -I<repo>/include -I<repo>/pyx/fastctc; a mismatch is
 * a compile error naming the field.  The program itself does nothing. */
#include <stddef.h>
#include "xla/ffi/api/c_api.h"

/* _xla_ffi.h needs the optax driver's declarations only for its handler body; compile the
 * whole engine so the header is checked exactly as the extension includes it. */
#define FASTCTC_IMPLEMENTATION
#define FASTCTC_STATIC
#include "fastctc/fastctc.h"
#define FCTC_USE_F32
#include "fastctc/detail/template.h"
#define FCTC_OX_LOG1P log1pf
#include "fastctc/detail/optax.h"
#include "fastctc/detail/optax_batch.h"
#undef FCTC_OX_LOG1P
#define FCTC_USE_F64
#include "fastctc/detail/template.h"
#define FCTC_OX_LOG1P log1p
#include "fastctc/detail/optax.h"
#include "fastctc/detail/optax_batch.h"
#undef FCTC_OX_LOG1P
#include "_xla_ffi.h"

#define SAME(ours, theirs, f_ours, f_theirs)                                                   \
    _Static_assert(offsetof(ours, f_ours) == offsetof(theirs, f_theirs), #theirs "." #f_theirs); \
    _Static_assert(sizeof(((ours *)0)->f_ours) == sizeof(((theirs *)0)->f_theirs), #theirs "." #f_theirs " size")

SAME(fctc_xla_ext, XLA_FFI_Extension_Base, struct_size, struct_size);
SAME(fctc_xla_ext, XLA_FFI_Extension_Base, type, type);
SAME(fctc_xla_ext, XLA_FFI_Extension_Base, next, next);
SAME(fctc_xla_version, XLA_FFI_Api_Version, major_version, major_version);
SAME(fctc_xla_version, XLA_FFI_Api_Version, minor_version, minor_version);
SAME(fctc_xla_metadata, XLA_FFI_Metadata, api_version, api_version);
SAME(fctc_xla_metadata, XLA_FFI_Metadata, traits, traits);
SAME(fctc_xla_metadata_ext, XLA_FFI_Metadata_Extension, extension_base, extension_base);
SAME(fctc_xla_metadata_ext, XLA_FFI_Metadata_Extension, metadata, metadata);
SAME(fctc_xla_buffer, XLA_FFI_Buffer, dtype, dtype);
SAME(fctc_xla_buffer, XLA_FFI_Buffer, data, data);
SAME(fctc_xla_buffer, XLA_FFI_Buffer, rank, rank);
SAME(fctc_xla_buffer, XLA_FFI_Buffer, dims, dims);
SAME(fctc_xla_list, XLA_FFI_Args, size, size);
SAME(fctc_xla_list, XLA_FFI_Args, types, types);
SAME(fctc_xla_list, XLA_FFI_Args, items, args);
SAME(fctc_xla_list, XLA_FFI_Rets, items, rets);
SAME(fctc_xla_span, XLA_FFI_ByteSpan, ptr, ptr);
SAME(fctc_xla_span, XLA_FFI_ByteSpan, len, len);
SAME(fctc_xla_scalar, XLA_FFI_Scalar, dtype, dtype);
SAME(fctc_xla_scalar, XLA_FFI_Scalar, value, value);
SAME(fctc_xla_attrs, XLA_FFI_Attrs, size, size);
SAME(fctc_xla_attrs, XLA_FFI_Attrs, types, types);
SAME(fctc_xla_attrs, XLA_FFI_Attrs, names, names);
SAME(fctc_xla_attrs, XLA_FFI_Attrs, attrs, attrs);
SAME(fctc_xla_error_args, XLA_FFI_Error_Create_Args, message, message);
SAME(fctc_xla_error_args, XLA_FFI_Error_Create_Args, errc, errc);
SAME(fctc_xla_api, XLA_FFI_Api, api_version, api_version);
SAME(fctc_xla_api, XLA_FFI_Api, internal_api, internal_api);
SAME(fctc_xla_api, XLA_FFI_Api, error_create, XLA_FFI_Error_Create);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, api, api);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, ctx, ctx);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, stage, stage);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, args, args);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, rets, rets);
SAME(fctc_xla_call_frame, XLA_FFI_CallFrame, attrs, attrs);

_Static_assert(FCTC_XLA_CALL_FRAME_SIZE <= XLA_FFI_CallFrame_STRUCT_SIZE, "call frame");
_Static_assert(FCTC_XLA_METADATA_SIZE == XLA_FFI_Metadata_STRUCT_SIZE, "metadata size");
_Static_assert(FCTC_XLA_METADATA_EXT_SIZE == XLA_FFI_Metadata_Extension_STRUCT_SIZE, "metadata extension size");
_Static_assert(FCTC_XLA_VERSION_SIZE == XLA_FFI_Api_Version_STRUCT_SIZE, "version size");
_Static_assert(FCTC_XLA_ERROR_ARGS_SIZE == XLA_FFI_Error_Create_Args_STRUCT_SIZE, "error args size");
_Static_assert((int)FCTC_XLA_EXT_METADATA == (int)XLA_FFI_Extension_Metadata, "metadata extension type");
_Static_assert((int)FCTC_XLA_ERR_INVALID_ARGUMENT == (int)XLA_FFI_Error_Code_INVALID_ARGUMENT, "error code");
_Static_assert((int)FCTC_XLA_ERR_RESOURCE_EXHAUSTED == (int)XLA_FFI_Error_Code_RESOURCE_EXHAUSTED, "error code");
_Static_assert((int)FCTC_XLA_S32 == (int)XLA_FFI_DataType_S32 && (int)FCTC_XLA_S64 == (int)XLA_FFI_DataType_S64, "int dtypes");
_Static_assert((int)FCTC_XLA_F32 == (int)XLA_FFI_DataType_F32 && (int)FCTC_XLA_F64 == (int)XLA_FFI_DataType_F64, "float dtypes");
_Static_assert((int)FCTC_XLA_BUFFER == (int)XLA_FFI_ArgType_BUFFER && (int)FCTC_XLA_BUFFER == (int)XLA_FFI_RetType_BUFFER, "buffer");
_Static_assert((int)FCTC_XLA_SCALAR == (int)XLA_FFI_AttrType_SCALAR, "scalar attribute");
_Static_assert((int)FCTC_XLA_EXECUTE == (int)XLA_FFI_ExecutionStage_EXECUTE, "execute stage");
_Static_assert(FCTC_XLA_API_MAJOR == XLA_FFI_API_MAJOR && FCTC_XLA_API_MINOR <= XLA_FFI_API_MINOR, "API version");

/* the handler has XLA's handler type */
static XLA_FFI_Handler *const handler_type_check = (XLA_FFI_Handler *)fctc_xla_optax_ctc;

int main(void) { return handler_type_check == 0; }
