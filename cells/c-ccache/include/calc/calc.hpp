#pragma once

#include <cstdint>
#include <string>
#include <vector>

// A chain of small, independent stages: each lives in a translation unit of its own, so a
// change to one recompiles one.
namespace calc {

std::vector<std::int64_t> stage00(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage01(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage02(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage03(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage04(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage05(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage06(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage07(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage08(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage09(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage10(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage11(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage12(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage13(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage14(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage15(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage16(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage17(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage18(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage19(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage20(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage21(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage22(const std::vector<std::int64_t>& in);
std::vector<std::int64_t> stage23(const std::vector<std::int64_t>& in);
std::string describe(const std::vector<std::int64_t>& values);

}  // namespace calc

extern "C" {
long calc_mix00(long x);
long calc_mix01(long x);
long calc_mix02(long x);
long calc_mix03(long x);
long calc_mix04(long x);
long calc_mix05(long x);
}
