// Status: how every fallible function in the native core reports failure.
//
// Nothing under native/ may exit, abort or throw across the core's API: a Node process hosts
// us, and killing it loses the user's training run. Core functions return a Status; the addon
// turns a non-OK Status into a JS QuietstarError carrying `code`. Messages say what was wrong
// in user terms (argument, shape, dtype) and end with the file:line that raised them.
#pragma once

#include <cstdio>
#include <string>
#include <utility>

namespace qs {

enum class Code {
  OK = 0,
  INVALID_ARGUMENT,  // bad shape, dtype, index or option: the caller's fault
  OUT_OF_MEMORY,     // host or device allocation failed
  CUDA_ERROR,        // a CUDA runtime call failed (non-sticky: the engine stays usable)
  ENGINE_FAILED,     // sticky CUDA error: the context is lost, restart the process
  DISPOSED,          // use of an object after dispose()
  UNAVAILABLE,       // asked for something this build or machine lacks (cuda without a GPU)
  UNIMPLEMENTED,     // an op not written for this backend yet
  INTERNAL,          // a bug in quietstar
};

const char* code_name(Code code);

class Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::OK; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string to_string() const;

 private:
  Code code_ = Code::OK;
  std::string message_;
};

// printf-style message with the raising file:line appended.
Status make_status(Code code, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace qs

#define QS_ERROR(code, ...) ::qs::make_status(::qs::Code::code, __FILE__, __LINE__, __VA_ARGS__)

// Return an INVALID_ARGUMENT status unless `cond` holds.
#define QS_CHECK_ARG(cond, ...)                       \
  do {                                                \
    if (!(cond)) return QS_ERROR(INVALID_ARGUMENT, __VA_ARGS__); \
  } while (0)

#define QS_RETURN_IF_ERROR(expr)          \
  do {                                    \
    ::qs::Status qs_status_ = (expr);     \
    if (!qs_status_.ok()) return qs_status_; \
  } while (0)
