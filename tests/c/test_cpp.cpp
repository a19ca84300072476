// tests/c/test_cpp.cpp: the C API test (test_capi.c) compiled as C++, through the
// header's extern "C" block, plus a check that a second C++ translation unit can include
// the header without FASTCTC_IMPLEMENTATION (declarations only) and call it from a lambda.
// Built by tests/test_capi.py with -std=c++11 -Wall -Wextra -Werror -pedantic.
#include "test_capi.c"

#include <vector>

namespace {
// Uses only the declarations: the same code would compile in a file that does not
// define FASTCTC_IMPLEMENTATION.
double graves_first_cost() {
    std::vector<double> acts(60), costs(2);
    for (size_t k = 0; k < acts.size(); ++k) acts[k] = std::log(graves_probs[k]);
    fastctc_options o = fastctc_options();  // value-initialised: the defaults
    o.blank = GBLANK;
    o.batch_major = 1;
    auto call = [&]() {
        return fastctc_loss_f64(acts.data(), nullptr, graves_labels, graves_label_lengths, graves_input_lengths, GT,
                                GN, GC, costs.data(), nullptr, 0, &o);
    };
    return call() == FASTCTC_OK ? costs[0] : -1.0;
}
}  // namespace

struct CppCheck {
    CppCheck() {
        double c = graves_first_cost();
        CHECK(std::fabs(c - graves_loss[0]) < 1e-4, "C++ lambda call: cost %g", c);
    }
};
static CppCheck cpp_check;
