// profile.cpp: the emulator's memory profiler (check bit CHECK_PROFILE).
//
// The lanes of a warp run one after another on the emulator, so a warp-level memory
// request is put together afterwards: the k-th access of lane l at one source
// location (since the warp's last full rendezvous) joins the k-th access of the other
// lanes there. Adjacent accesses of one lane that stay inside one aligned 16-byte
// chunk are first merged into one (the compiler splits a 16-byte vector access of
// the CUDA source into scalar accesses on the CPU; on the GPU it is one instruction).
// When every live lane of the warp meets at a collective or a barrier, or the block
// ends, the requests are measured:
// - global: bytes requested, 32-byte sectors and 128-byte lines touched, and the
//   ideal sector count (distinct bytes / 32); every touched byte is marked in its allocation,
//   so the launch knows the unique bytes of the whole grid;
// - shared: bank-conflict wavefronts. A request is served in phases (all 32 lanes for
//   accesses of up to 4 bytes, half warps for 8, quarter warps for 16; one phase per
//   8x16-byte matrix of ldmatrix); a phase takes as many wavefronts as the most
//   distinct 4-byte words it asks of one of the 32 banks.
#include <stdio.h>
#include <string.h>

#include <algorithm>

#include "check_state.h"

namespace tf_emu {
namespace {

thread_local std::string t_last_profile;

void emit(WorkerChecks* c, WarpProfile& wp, uint32_t lane) {
    LaneAccess& p = wp.pending[lane];
    if (p.space < 0) return;
    const uintptr_t key = p.at.at * 2 + (p.at.expl ? 1 : 0) + ((uintptr_t)p.kind << 56);
    const uint32_t occ = wp.occ[lane][key]++;
    Req& r = wp.reqs[ReqKey{p.at, occ, p.kind}];
    r.space = p.space;
    r.acc.push_back(LaneReq{p.addr, p.size, lane});
    p.space = -1;
    (void)c;
}

// Bank-conflict wavefronts of the accesses in one phase, and the ideal count.
void phase_wavefronts(const std::vector<LaneReq>& acc, uint64_t& wave, uint64_t& ideal) {
    if (acc.empty()) return;
    std::vector<uintptr_t> words;
    uint64_t bytes = 0;
    for (const LaneReq& a : acc) {
        bytes += a.size;
        for (uintptr_t w = a.addr >> 2; w <= (a.addr + a.size - 1) >> 2; ++w) words.push_back(w);
    }
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    uint32_t per_bank[32] = {};
    uint32_t worst = 1;
    for (uintptr_t w : words) worst = std::max(worst, ++per_bank[w % 32]);
    wave += worst;
    const uint64_t unique_bytes = words.size() * 4;
    ideal += std::max<uint64_t>(1, (std::min(bytes, unique_bytes) + 127) / 128);
}

void measure(WorkerChecks* c, const ReqKey& k, const Req& r) {
    LineStats& s = c->lines[std::make_pair(k.at, k.kind)];
    s.space = r.space;
    s.kind = k.kind;
    s.requests++;
    uint64_t bytes = 0;
    for (const LaneReq& a : r.acc) bytes += a.size;
    s.bytes += bytes;
    if (r.space == 0) {
        std::vector<uintptr_t> sec, lin;
        for (const LaneReq& a : r.acc) {
            for (uintptr_t x = a.addr >> 5; x <= (a.addr + a.size - 1) >> 5; ++x) sec.push_back(x);
            for (uintptr_t x = a.addr >> 7; x <= (a.addr + a.size - 1) >> 7; ++x) lin.push_back(x);
            const AllocRec* rec = alloc_find(*c->L->allocs, a.addr);
            if (rec && !rec->freed && a.addr >= rec->lo && a.addr + a.size <= rec->hi) {
                for (uintptr_t x = a.addr; x < a.addr + a.size; ++x) {
                    const size_t i = x - rec->lo;
                    __atomic_fetch_or(&rec->touch[i >> 3], (uint8_t)(1u << (i & 7)), __ATOMIC_RELAXED);
                }
            }
        }
        std::sort(sec.begin(), sec.end());
        std::sort(lin.begin(), lin.end());
        s.sectors += (uint64_t)(std::unique(sec.begin(), sec.end()) - sec.begin());
        s.lines += (uint64_t)(std::unique(lin.begin(), lin.end()) - lin.begin());
        // The fewest sectors that hold the distinct bytes asked for (lanes reading one
        // address share it: a broadcast).
        std::vector<std::pair<uintptr_t, uintptr_t>> iv;
        for (const LaneReq& a : r.acc) iv.emplace_back(a.addr, a.addr + a.size);
        std::sort(iv.begin(), iv.end());
        uint64_t unique = 0;
        uintptr_t end = 0;
        for (const auto& x : iv) {
            const uintptr_t from = std::max(x.first, end);
            if (x.second > from) unique += x.second - from;
            end = std::max(end, x.second);
        }
        s.ideal_sectors += (unique + 31) / 32;
        return;
    }
    uint32_t size = 0;
    for (const LaneReq& a : r.acc) size = std::max(size, a.size);
    const uint32_t per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
    std::vector<LaneReq> phase[4];
    for (const LaneReq& a : r.acc) phase[(a.lane / per_phase) & 3].push_back(a);
    for (auto& ph : phase) phase_wavefronts(ph, s.wavefronts, s.ideal_wavefronts);
}

}  // namespace

void profile_access(WorkerChecks* c, uintptr_t a, uint32_t n, int space, int kind, Where at, uint32_t tid) {
    WarpProfile& wp = c->warps[tid >> 5];
    const uint32_t lane = tid & 31;
    LaneAccess& p = wp.pending[lane];
    if (p.space == space && p.kind == kind && !at.expl && (kind == P_LOAD || kind == P_STORE) &&
        p.addr + p.size == a && ((p.addr ^ (a + n - 1)) >> 4) == 0) {
        p.size += n;  // the next piece of one vector access
        return;
    }
    emit(c, wp, lane);
    p.addr = a;
    p.size = n;
    p.at = at;
    p.space = space;
    p.kind = kind;
}

void profile_flush_warp(WorkerChecks* c, uint32_t warp) {
    WarpProfile& wp = c->warps[warp];
    for (uint32_t l = 0; l < 32; ++l) emit(c, wp, l);
    for (const auto& kv : wp.reqs) measure(c, kv.first, kv.second);
    wp.reqs.clear();
    for (auto& m : wp.occ) m.clear();
}

void profile_ldmatrix(WorkerChecks* c, const void* const* rows, int nmat, Where at) {
    LineStats& s = c->lines[std::make_pair(at, (int)P_LDSM)];
    s.space = 1;
    s.kind = P_LDSM;
    s.requests++;
    s.bytes += 128u * (uint32_t)nmat;
    for (int m = 0; m < nmat; ++m) {
        std::vector<LaneReq> ph;
        for (int r = 0; r < 8; ++r)
            ph.push_back(LaneReq{reinterpret_cast<uintptr_t>(rows[8 * m + r]), 16, (uint32_t)(8 * m + r)});
        phase_wavefronts(ph, s.wavefronts, s.ideal_wavefronts);
    }
}

void profile_block_begin(WorkerChecks* c) {
    for (auto& wp : c->warps) {
        for (auto& p : wp.pending) p.space = -1;
        wp.reqs.clear();
        for (auto& m : wp.occ) m.clear();
    }
    c->counts.warps += (c->nthreads + 31) / 32;
}

void profile_block_end(WorkerChecks* c) {
    for (uint32_t w = 0; w < (c->nthreads + 31) / 32; ++w) profile_flush_warp(c, w);
    LaunchChecks* L = c->L;
    std::lock_guard<std::mutex> g(L->mu);
    for (const auto& kv : c->lines) {
        LineStats& d = L->lines[kv.first];
        const LineStats& s = kv.second;
        d.space = s.space;
        d.kind = s.kind;
        d.requests += s.requests;
        d.bytes += s.bytes;
        d.sectors += s.sectors;
        d.lines += s.lines;
        d.ideal_sectors += s.ideal_sectors;
        d.wavefronts += s.wavefronts;
        d.ideal_wavefronts += s.ideal_wavefronts;
    }
    c->lines.clear();
    ProfileCounts& t = L->counts;
    t.mma += c->counts.mma;
    t.ldmatrix += c->counts.ldmatrix;
    t.cp_async += c->counts.cp_async;
    t.barriers += c->counts.barriers;
    t.shuffles += c->counts.shuffles;
    t.other_collectives += c->counts.other_collectives;
    t.warps += c->counts.warps;
    c->counts = ProfileCounts();
}

namespace {

const char* kind_name(int k) {
    switch (k) {
        case P_LOAD: return "load";
        case P_STORE: return "store";
        case P_ATOMIC: return "atomic";
        case P_LDSM: return "ldmatrix";
        case P_CP_READ: return "cp.async-read";
        case P_CP_WRITE: return "cp.async-write";
        default: return "?";
    }
}


}  // namespace

// The report, as tab-separated lines (parsed by kernels/emu.rs):
//   kernel <name>
//   counts <warps> <mma> <ldmatrix> <cp.async> <barriers> <shuffles> <other collectives>
//   unique <bytes of global memory touched by the grid>
//   line <site> <space> <kind> <requests> <bytes> <sectors> <lines> <ideal sectors> <wavefronts> <ideal wavefronts>
void profile_store_report(LaunchChecks* L) {
    std::string s = std::string("kernel\t") + L->kernel + "\n";
    char buf[512];
    const ProfileCounts& c = L->counts;
    snprintf(buf, sizeof buf, "counts\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\n", (unsigned long long)c.warps,
             (unsigned long long)c.mma, (unsigned long long)c.ldmatrix, (unsigned long long)c.cp_async,
             (unsigned long long)c.barriers, (unsigned long long)c.shuffles, (unsigned long long)c.other_collectives);
    s += buf;
    uint64_t unique = 0;
    for (const AllocRec& r : *L->allocs) {
        if (r.freed) continue;
        const size_t nbytes = (r.hi - r.lo + 7) / 8;
        uint8_t* t = r.touch.get();
        for (size_t i = 0; i < nbytes; ++i) {
            const uint8_t v = __atomic_exchange_n(&t[i], (uint8_t)0, __ATOMIC_RELAXED);
            unique += (uint64_t)__builtin_popcount(v);
        }
    }
    snprintf(buf, sizeof buf, "unique\t%llu\n", (unsigned long long)unique);
    s += buf;
    for (const auto& kv : L->lines) {
        const LineStats& x = kv.second;
        snprintf(buf, sizeof buf, "line\t%s\t%s\t%s\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\t%llu\n",
                 where_str(kv.first.first).c_str(), x.space ? "shared" : "global", kind_name(x.kind),
                 (unsigned long long)x.requests, (unsigned long long)x.bytes, (unsigned long long)x.sectors,
                 (unsigned long long)x.lines, (unsigned long long)x.ideal_sectors, (unsigned long long)x.wavefronts,
                 (unsigned long long)x.ideal_wavefronts);
        s += buf;
    }
    t_last_profile = symbolize_markers(s);
}

}  // namespace tf_emu

extern "C" size_t tf_emu_last_profile(char* buf, size_t len) {
    const std::string& s = tf_emu::t_last_profile;
    if (buf && len) {
        const size_t n = s.size() < len - 1 ? s.size() : len - 1;
        memcpy(buf, s.data(), n);
        buf[n] = 0;
    }
    return s.size();
}
