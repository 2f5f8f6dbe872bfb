#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>

#include "calc/calc.hpp"

namespace calc {

// Stage 18: sort, fold neighbours with a weight of 20, and keep a tally by remainder.
std::vector<std::int64_t> stage18(const std::vector<std::int64_t>& in) {
    std::vector<std::int64_t> out(in);
    std::stable_sort(out.begin(), out.end());
    std::map<std::int64_t, std::int64_t> tally;
    for (std::size_t i = 0; i < out.size(); ++i) {
        std::int64_t next = i + 1 < out.size() ? out[i + 1] : 18;
        out[i] = (out[i] * 20 + next) % 1000003;
        tally[out[i] % 21] += 1;
    }
    out.push_back(std::accumulate(tally.begin(), tally.end(), std::int64_t{0},
                                  [](std::int64_t acc, const auto& kv) { return acc + kv.second * kv.first; }));
    return out;
}

}  // namespace calc
