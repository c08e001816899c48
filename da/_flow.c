/* tfda.da._flow: the kernel EnSF's mixture flow, fused, for the CPU.
 *
 * Why: on a CPU the flow of da/gaussian_mixture.py is a dozen elementwise torch passes
 * per step over batches of 20 x 20 matrices, each streamed through memory, plus
 * numpy's small products; here every domain's whole flow runs in the first-level cache
 * (docs/performance.md has the timings). Same arithmetic, up to the order of the
 * floating-point sums; the torch path stays the reference and the path for
 * accelerators and autograd. Optional: without a C compiler tfda installs without it.
 *
 * Python: flow(z, means, var, logw, alphas, betas2, second_order, means_shared,
 *              var_shared, logw_shared) -> None, z (B, N, K) overwritten; means (B or 1,
 *              M, K), var (B or 1, K), logw (B or 1, M) or None, all C-contiguous and of
 *              z's dtype (float32 or float64); alphas, betas2 float64 (steps + 1).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#define LOG2E 1.44269504088896340736

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
/* one copy per vector width, chosen when the module loads (ifunc); the helpers are
   inlined so that each copy is compiled for its width */
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
/* the vector helpers are always inlined, so no vector crosses a call */
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define CLONES
#endif
#define INLINE inline __attribute__((always_inline))
/* the points are padded to whole blocks of LANES, and loops over them run in blocks of
   that fixed length, which the compiler turns into whole vectors */
#define PADDED(n) (((n) + LANES - 1) / LANES * LANES)

#define REAL double
typedef double vec_f64 __attribute__((vector_size(32)));
typedef uint64_t uvec_f64 __attribute__((vector_size(32)));
typedef int64_t ivec_f64 __attribute__((vector_size(32)));
#define VEC vec_f64
#define UVEC uvec_f64
#define IVEC ivec_f64
#define LANES 4
#define NAME(x) x##_f64
#define UINT uint64_t
#define EXP_POLY(f) /* sum_i f^i / i!, Horner */ \
    (1 + (f) * (1 + (f) * (0.5 + (f) * (0.16666666666666666 + (f) * (0.041666666666666664 + (f) * (0.0083333333333333332 + (f) * (0.0013888888888888889 + (f) * (0.00019841269841269841 + (f) * (2.4801587301587302e-05 + (f) * (2.7557319223985893e-06 + (f) * (2.7557319223985888e-07 + (f) * (2.505210838544172e-08 + (f) * (2.08767569878681e-09 + (f) * (1.6059043836821613e-10))))))))))))))
#define EXP_BIAS 1023.0
#define MANT_BITS 52
#define TWO_MANT 4503599627370496.0 /* 2^52 */
#define ROUNDER 6755399441055744.0  /* 1.5 * 2^52 */
#define SQRT sqrt
#include "_flow_body.h"
#undef REAL
#undef NAME
#undef UINT
#undef EXP_POLY
#undef EXP_BIAS
#undef MANT_BITS
#undef TWO_MANT
#undef ROUNDER
#undef SQRT
#undef VEC
#undef UVEC
#undef IVEC
#undef LANES

#define REAL float
typedef float vec_f32 __attribute__((vector_size(32)));
typedef uint32_t uvec_f32 __attribute__((vector_size(32)));
typedef int32_t ivec_f32 __attribute__((vector_size(32)));
#define VEC vec_f32
#define UVEC uvec_f32
#define IVEC ivec_f32
#define LANES 8
#define NAME(x) x##_f32
#define UINT uint32_t
#define EXP_POLY(f) /* sum_i f^i / i!, Horner */ \
    (1.0f + (f) * (1.0f + (f) * (0.5f + (f) * (0.16666666666666666f + (f) * (0.041666666666666664f + (f) * (0.0083333333333333332f + (f) * (0.0013888888888888889f + (f) * (0.00019841269841269841f))))))))
#define EXP_BIAS 127.0f
#define MANT_BITS 23
#define TWO_MANT 8388608.0f /* 2^23 */
#define ROUNDER 12582912.0f /* 1.5 * 2^23 */
#define SQRT sqrtf
#include "_flow_body.h"

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_ValueError, "flow: %s must be a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static PyObject *flow(PyObject *self, PyObject *args)
{
    PyObject *oz, *om, *ov, *ol, *oa, *ob;
    int second_order, batch_n, m, k, n, steps;
    if (!PyArg_ParseTuple(args, "OOOOOOpiiiii", &oz, &om, &ov, &ol, &oa, &ob, &second_order,
                          &batch_n, &m, &k, &n, &steps))
        return NULL;
    Py_buffer z, mu, var, logw, al, be;
    int have_logw = ol != Py_None, ok = 0;
    Py_buffer *views[6] = {&z, &mu, &var, &al, &be, &logw};
    int taken = 0;
    if (get_buffer(oz, &z, 1, "z") < 0) goto done;
    taken = 1;
    if (get_buffer(om, &mu, 0, "means") < 0) goto done;
    taken = 2;
    if (get_buffer(ov, &var, 0, "var") < 0) goto done;
    taken = 3;
    if (get_buffer(oa, &al, 0, "alphas") < 0) goto done;
    taken = 4;
    if (get_buffer(ob, &be, 0, "betas2") < 0) goto done;
    taken = 5;
    if (have_logw && get_buffer(ol, &logw, 0, "logw") < 0) goto done;
    taken = have_logw ? 6 : 5;

    Py_ssize_t item = z.itemsize;
    int is_double = z.format[0] == 'd', is_float = z.format[0] == 'f';
    if (!(is_double || is_float) || mu.format[0] != z.format[0] || var.format[0] != z.format[0]
        || (have_logw && logw.format[0] != z.format[0])) {
        PyErr_SetString(PyExc_TypeError, "flow: z, means, var, logw must share float32/64");
        goto done;
    }
    if (al.format[0] != 'd' || be.format[0] != 'd' || al.len != (steps + 1) * 8
        || be.len != (steps + 1) * 8) {
        PyErr_SetString(PyExc_ValueError, "flow: alphas, betas2 must be float64 (steps + 1)");
        goto done;
    }
    long long b = batch_n;
    Py_ssize_t one_m = (Py_ssize_t)m * k * item, one_v = (Py_ssize_t)k * item;
    Py_ssize_t one_l = (Py_ssize_t)m * item;
    if (z.len != (Py_ssize_t)b * n * k * item || (mu.len != one_m && mu.len != b * one_m)
        || (var.len != one_v && var.len != b * one_v)
        || (have_logw && logw.len != one_l && logw.len != b * one_l)) {
        PyErr_SetString(PyExc_ValueError, "flow: array sizes do not match (B, N, M, K)");
        goto done;
    }
    long long ms = mu.len == one_m ? 0 : (long long)m * k, vs = var.len == one_v ? 0 : k;
    long long ls = have_logw && logw.len != one_l ? m : 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    if (is_double)
        rc = flow_all_f64(b, m, k, n, steps, al.buf, be.buf, second_order, z.buf, mu.buf, ms,
                          var.buf, vs, have_logw ? logw.buf : NULL, ls);
    else
        rc = flow_all_f32(b, m, k, n, steps, al.buf, be.buf, second_order, z.buf, mu.buf, ms,
                          var.buf, vs, have_logw ? logw.buf : NULL, ls);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    ok = 1;
done:
    for (int i = 0; i < taken; ++i) PyBuffer_Release(views[i]);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"flow", flow, METH_VARARGS, "The fused mixture flow of many domains, in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flow", NULL, -1, methods};

PyMODINIT_FUNC PyInit__flow(void) { return PyModule_Create(&module); }
