#include <iostream>

#include "calc/calc.hpp"

int main() {
    std::vector<std::int64_t> values{3, 1, 4, 1, 5, 9, 2, 6};
    values = calc::stage00(values);
    values = calc::stage01(values);
    values = calc::stage02(values);
    values = calc::stage03(values);
    values = calc::stage04(values);
    values = calc::stage05(values);
    values = calc::stage06(values);
    values = calc::stage07(values);
    values = calc::stage08(values);
    values = calc::stage09(values);
    values = calc::stage10(values);
    values = calc::stage11(values);
    values = calc::stage12(values);
    values = calc::stage13(values);
    values = calc::stage14(values);
    values = calc::stage15(values);
    values = calc::stage16(values);
    values = calc::stage17(values);
    values = calc::stage18(values);
    values = calc::stage19(values);
    values = calc::stage20(values);
    values = calc::stage21(values);
    values = calc::stage22(values);
    values = calc::stage23(values);
    values.push_back(calc_mix00(values.back()));
    values.push_back(calc_mix01(values.back()));
    values.push_back(calc_mix02(values.back()));
    values.push_back(calc_mix03(values.back()));
    values.push_back(calc_mix04(values.back()));
    values.push_back(calc_mix05(values.back()));
    std::cout << calc::describe(values) << '\n';
    return 0;
}
