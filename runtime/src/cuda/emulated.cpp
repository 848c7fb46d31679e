// kernels.cu compiled for the CPU, for the tests (emulated.rs builds it with the system's C++
// compiler). A launch runs its blocks one after another, each as one thread per CUDA thread
// with a barrier for __syncthreads, so a kernel's __shared__ arrays (statics here) belong to
// one block at a time; launches run one at a time. Each kernel's C parameters are described to
// the caller, which checks its arguments against them before launching.

#include <math.h>

#include <algorithm>
#include <barrier>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct Dim3 {
    unsigned x, y, z;
};
static thread_local Dim3 threadIdx, blockIdx, blockDim, gridDim;
static thread_local std::barrier<>* block_barrier;

#define __global__
#define __device__ static inline
#define __shared__ static
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
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
    };
    return t;
}

std::mutex one_launch_at_a_time;

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
// cuLaunchKernel. 0 when it ran, -1 for no such kernel, -2 when threads could not be made.
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, void** params) {
    auto it = table().find(name);
    if (it == table().end()) return -1;
    const Entry& k = it->second;
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    const unsigned threads = bx * by * bz;
    try {
        for (unsigned z = 0; z < gz; ++z)
            for (unsigned y = 0; y < gy; ++y)
                for (unsigned x = 0; x < gx; ++x) {
                    std::barrier<> bar(threads);
                    std::vector<std::thread> ts;
                    ts.reserve(threads);
                    for (unsigned t = 0; t < threads; ++t) {
                        ts.emplace_back([&, t] {
                            threadIdx = Dim3{t % bx, (t / bx) % by, t / (bx * by)};
                            blockIdx = Dim3{x, y, z};
                            blockDim = Dim3{bx, by, bz};
                            gridDim = Dim3{gx, gy, gz};
                            block_barrier = &bar;
                            k.call(params);
                            // A thread that has returned no longer takes part in barriers.
                            bar.arrive_and_drop();
                        });
                    }
                    for (auto& t : ts) t.join();
                }
    } catch (...) {
        return -2;
    }
    return 0;
}
