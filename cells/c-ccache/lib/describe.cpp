#include <sstream>

#include "calc/calc.hpp"

namespace calc {

std::string describe(const std::vector<std::int64_t>& values) {
    std::ostringstream text;
    text << values.size() << " values:";
    for (auto v : values) text << ' ' << v;
    return text.str();
}

}  // namespace calc
