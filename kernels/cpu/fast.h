/*
 * fast.h - controls of the fast CPU backend (`sw_ops_cpu`, declared in ops.h).
 *
 * The backend picks its SIMD level once, on first use: AVX2+FMA+F16C when the CPU (and OS) support
 * them, else the portable C path. Setting the environment variable SW_CPU_SIMD=portable before the
 * first op forces the portable path for the whole process.
 */
#ifndef SW_KERNELS_CPU_FAST_H
#define SW_KERNELS_CPU_FAST_H

/*
 * Forces (on != 0) or releases (on == 0) the portable path, for tests that check both paths on an
 * AVX2 machine. Call it only between ops, from the thread that drives the kernels.
 */
void sw_cpu_force_portable(int on);

#endif
