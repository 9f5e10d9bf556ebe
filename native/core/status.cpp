#include "quietstar/status.h"

#include <cstdarg>
#include <cstring>

namespace qs {

const char* code_name(Code code) {
  switch (code) {
    case Code::OK: return "OK";
    case Code::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case Code::OUT_OF_MEMORY: return "OUT_OF_MEMORY";
    case Code::CUDA_ERROR: return "CUDA_ERROR";
    case Code::ENGINE_FAILED: return "ENGINE_FAILED";
    case Code::DISPOSED: return "DISPOSED";
    case Code::UNAVAILABLE: return "UNAVAILABLE";
    case Code::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case Code::INTERNAL: return "INTERNAL";
  }
  return "INTERNAL";
}

std::string Status::to_string() const {
  if (ok()) return "OK";
  return std::string(code_name(code_)) + ": " + message_;
}

Status make_status(Code code, const char* file, int line, const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  // Keep the path short: "native/cpu/gemm.cpp" rather than the absolute build path.
  const char* short_file = strstr(file, "native/");
  if (!short_file) short_file = file;
  std::string message(buf);
  message += " [" + std::string(short_file) + ":" + std::to_string(line) + "]";
  return Status(code, std::move(message));
}

}  // namespace qs
