// ops.h: the kernels as named operations on tensors, with every argument validated.
//
// This is the boundary where untrusted input (from JS, or any C++ caller) meets the kernels:
// each op checks dtypes, devices, shapes (naming the argument and the dimension that
// disagrees), index ranges and attributes, allocates its outputs, then calls the kernel for
// the engine's device. Kernels below this line trust their inputs.
//
// Backward ops follow the kernels' convention: gradient tensors are passed in as arguments
// and accumulated into (+=); they are also returned under their own names.
// Must run on the engine's compute thread (the addon and Engine::run_sync see to it).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "quietstar/engine.h"

namespace qs {

struct OpArgs {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, double> numbers;
  std::map<std::string, std::string> strings;
};

using OpOutputs = std::map<std::string, Tensor>;

Status run_op(Engine& engine, const std::string& name, const OpArgs& args, OpOutputs* out);

// Every registered op name, sorted (for error messages and the JS typings test).
std::vector<std::string> op_names();

}  // namespace qs
