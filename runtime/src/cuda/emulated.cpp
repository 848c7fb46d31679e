// kernels.cu compiled for the CPU, for the tests (emulated.rs builds it with the system's C++
// compiler). A launch runs its blocks one after another; a block's CUDA threads are fibers on
// one OS thread, each run until it reaches __syncthreads or returns, round after round, so a
// round ends only when every thread has arrived: the barrier's meaning, without the cost of OS
// threads. On x86-64 a fiber switch is a few instructions (callee-saved registers and the
// stack pointer); elsewhere it is ucontext's, which also saves the signal mask by a syscall.
// A kernel's __shared__ arrays (statics here) thus belong to one block at a time; launches run
// one at a time. Each kernel's C parameters are described to the caller, which checks its
// arguments against them before launching.

#include <math.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct Dim3 {
    unsigned x, y, z;
};
// Plain statics, not thread-locals (slow to reach in a shared library): launches run one at a
// time, under a lock.
static Dim3 threadIdx, blockIdx, blockDim, gridDim;

// One CUDA thread of the running block: its stack and where it stopped.
struct Fiber {
    std::vector<char> stack;
    bool done;
    Dim3 idx;
#if defined(__x86_64__)
    void* sp;
#else
    ucontext_t ctx;
#endif
};
static Fiber* running;

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its pointer in *save, and
// continues on `next` (a stack this function saved, or one made by `start`).
extern "C" __attribute__((visibility("hidden"))) void emu_switch(void** save, void* next);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
static void* scheduler;
static inline void to_scheduler() { emu_switch(&running->sp, scheduler); }
static inline void to_fiber(Fiber& f) { emu_switch(&scheduler, f.sp); }
#else
static ucontext_t scheduler;
static inline void to_scheduler() { swapcontext(&running->ctx, &scheduler); }
static inline void to_fiber(Fiber& f) { swapcontext(&scheduler, &f.ctx); }
#endif

#define __global__
#define __device__ static inline
#define __shared__ static
// Back to the scheduler, which resumes this thread once every thread of the block is here.
static inline void __syncthreads() { to_scheduler(); }
static inline float __int_as_float(unsigned v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned v;
    std::memcpy(&v, &f, sizeof v);
    return v;
}
using std::min;

#include "kernels.cu"

namespace {

// A parameter as the caller checks it: the value's size (a pointer's: the pointee's), and
// flags for floating point, a pointer, and a pointer to const.
enum : int { FLOAT = 16, CONST = 32, POINTER = 64 };

template <typename A>
int describe() {
    if constexpr (std::is_pointer_v<A>) {
        using P = std::remove_pointer_t<A>;
        return POINTER | (std::is_const_v<P> ? CONST : 0) |
               (std::is_floating_point_v<P> ? FLOAT : 0) | int(sizeof(P));
    } else {
        return (std::is_floating_point_v<A> ? FLOAT : 0) | int(sizeof(A));
    }
}

struct Entry {
    std::function<void(void**)> call;
    std::vector<int> params;
};

template <typename... A, std::size_t... I>
void invoke(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<A*>(p[I])...);
}

template <typename... A>
Entry entry(void (*k)(A...)) {
    return Entry{[k](void** p) { invoke(k, p, std::index_sequence_for<A...>{}); },
                 {describe<A>()...}};
}

#define KERNEL(name) {#name, entry(name)}

const std::map<std::string, Entry>& table() {
    static const std::map<std::string, Entry> t = {
        KERNEL(add_into),         KERNEL(add_bias),       KERNEL(col_sum),
        KERNEL(layer_norm_fwd),   KERNEL(layer_norm_bwd), KERNEL(gelu_fwd),
        KERNEL(gelu_bwd),         KERNEL(attn_softmax),   KERNEL(attn_softmax_bwd),
        KERNEL(gather_rows),      KERNEL(scatter_rows),   KERNEL(scatter_add_rows),
        KERNEL(cross_entropy),    KERNEL(adam),           KERNEL(to_bf16),
        KERNEL(rms_norm_fwd),     KERNEL(rms_norm_bwd),   KERNEL(act_fwd),
        KERNEL(act_bwd),          KERNEL(gated_fwd),      KERNEL(gated_bwd),
        KERNEL(rope),             KERNEL(repeat_heads),   KERNEL(sum_heads),
        KERNEL(vocab_stats),      KERNEL(vocab_ce_grad),  KERNEL(moe_combine),
        KERNEL(moe_combine_bwd),
    };
    return t;
}

std::mutex one_launch_at_a_time;

constexpr std::size_t STACK = 16 * 1024;

// A block's fibers, reused from launch to launch (under the lock).
std::vector<Fiber> fibers;

// What the fiber being started runs.
const Entry* kernel;
void** kernel_params;

void fiber_main() {
    kernel->call(kernel_params);
    running->done = true;
    // Never resumed once done.
    to_scheduler();
}

// Makes `f` start at fiber_main when first switched to.
bool start(Fiber& f) {
    f.done = false;
#if defined(__x86_64__)
    // As if emu_switch had saved six registers under a return address into fiber_main, on a
    // stack that is 16-byte aligned at the call, as the ABI wants.
    auto top = reinterpret_cast<std::uintptr_t>(f.stack.data() + f.stack.size()) & ~std::uintptr_t(15);
    auto* sp = reinterpret_cast<void**>(top - 8);
    *--sp = reinterpret_cast<void*>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    f.sp = sp;
    return true;
#else
    if (getcontext(&f.ctx) != 0) return false;
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
    return true;
#endif
}

}  // namespace

// Kernel `name`'s parameters into `out` (at most `max`): their count, or -1 if there is no
// such kernel.
extern "C" int emu_signature(const char* name, int* out, int max) {
    auto it = table().find(name);
    if (it == table().end()) return -1;
    const auto& p = it->second.params;
    for (int i = 0; i < int(p.size()) && i < max; ++i) out[i] = p[i];
    return int(p.size());
}

// Runs kernel `name` on a grid of blocks, `params` pointing at each argument's value as in
// cuLaunchKernel. 0 when it ran, -1 for no such kernel, -2 when fibers could not be made.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, void** params) {
    auto it = table().find(name);
    if (it == table().end()) return -1;
    const Entry& k = it->second;
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    const unsigned threads = bx * by * bz;
    try {
        if (fibers.size() < threads) fibers.resize(threads);
        for (auto& f : fibers)
            if (f.stack.empty()) f.stack.resize(STACK);
    } catch (...) {
        return -2;
    }
    kernel = &k;
    kernel_params = params;
    gridDim = Dim3{gx, gy, gz};
    blockDim = Dim3{bx, by, bz};
    for (unsigned t = 0; t < threads; ++t)
        fibers[t].idx = Dim3{t % bx, (t / bx) % by, t / (bx * by)};
    std::vector<Fiber*> live;
    live.reserve(threads);
    for (unsigned z = 0; z < gz; ++z)
        for (unsigned y = 0; y < gy; ++y)
            for (unsigned x = 0; x < gx; ++x) {
                blockIdx = Dim3{x, y, z};
                live.clear();
                for (unsigned t = 0; t < threads; ++t) {
                    if (!start(fibers[t])) return -2;
                    live.push_back(&fibers[t]);
                }
                // Rounds: every thread not yet returned runs to its next barrier or its end.
                while (!live.empty()) {
                    std::size_t kept = 0;
                    for (Fiber* f : live) {
                        threadIdx = f->idx;
                        running = f;
                        to_fiber(*f);
                        if (!f->done) live[kept++] = f;
                    }
                    live.resize(kept);
                }
            }
    return 0;
}
