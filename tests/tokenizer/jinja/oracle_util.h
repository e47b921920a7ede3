// Runs tests/tokenizer/jinja/jinja_oracle.py (Debian python3-jinja2 set up as transformers
// sets it up) on a batch of (template, context) pairs and compares tessera's renderer with it.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/jinja/jinja.h"

namespace tessera::testing {

inline constexpr std::time_t kOracleNow = 1735732800;  // 2025-01-01 12:00:00 UTC

struct OracleCase {
  std::string name;  // shown on failure
  std::string tmpl;
  nlohmann::ordered_json context;
};

struct OracleResult {
  bool ok = false;
  bool raised = false;  // the error came from raise_exception()
  std::string text;     // output, or the error message
};

inline bool python_jinja2_available() {
  return std::system("/usr/bin/python3 -c 'import jinja2' >/dev/null 2>&1") == 0;
}

#define TESSERA_REQUIRE_PYTHON_JINJA2()                                          \
  do {                                                                           \
    if (!::tessera::testing::python_jinja2_available())                          \
      GTEST_SKIP() << "Debian python3-jinja2 is not installed (apt-get install " \
                      "python3-jinja2): the Jinja oracle tests need it";         \
  } while (0)

// Renders every case with Python Jinja2. Fails the test (and returns empty) on oracle trouble.
inline std::vector<OracleResult> run_oracle(const std::vector<OracleCase>& cases) {
  namespace fs = std::filesystem;
  nlohmann::ordered_json request;
  request["now"] = kOracleNow;
  request["cases"] = nlohmann::ordered_json::array();
  for (const auto& c : cases)
    request["cases"].push_back({{"template", c.tmpl}, {"context", c.context}});
  const fs::path dir = fs::temp_directory_path();
  const std::string tag = std::to_string(::getpid()) + "_" + std::to_string(std::rand());
  const fs::path in = dir / ("tessera_jinja_in_" + tag + ".json");
  const fs::path out = dir / ("tessera_jinja_out_" + tag + ".json");
  std::ofstream(in, std::ios::binary) << request.dump();
  const std::string script =
      std::string(TESSERA_SOURCE_DIR) + "/tests/tokenizer/jinja/jinja_oracle.py";
  const std::string cmd =
      "TZ=UTC /usr/bin/python3 '" + script + "' '" + in.string() + "' '" + out.string() + "'";
  const int rc = std::system(cmd.c_str());
  fs::remove(in);
  if (rc != 0) {
    ADD_FAILURE() << "the Jinja2 oracle failed: " << cmd;
    return {};
  }
  std::ifstream f(out, std::ios::binary);
  std::stringstream buf;
  buf << f.rdbuf();
  fs::remove(out);
  const auto results = nlohmann::json::parse(buf.str());
  std::vector<OracleResult> out_results;
  for (const auto& r : results) {
    OracleResult o;
    o.ok = r.at("ok").get<bool>();
    o.raised = r.value("raised", false);
    o.text = o.ok ? r.at("output").get<std::string>() : r.at("error").get<std::string>();
    out_results.push_back(std::move(o));
  }
  return out_results;
}

// Jinja2's "ExceptionType: message" against tessera's "template: line L: message".
inline bool same_error(const std::string& jinja2, const std::string& ours) {
  const size_t colon = jinja2.find(": ");
  const std::string want = colon == std::string::npos ? jinja2 : jinja2.substr(colon + 2);
  const std::string prefix = "template: line ";
  if (ours.rfind(prefix, 0) != 0) return false;
  const size_t sep = ours.find(": ", prefix.size());
  return sep != std::string::npos && ours.substr(sep + 2) == want;
}

inline OracleResult render_ours(const OracleCase& c) {
  OracleResult r;
  try {
    jinja::Options options;
    options.now = [] { return kOracleNow; };
    jinja::Template t(c.tmpl, options);
    r.text = t.render(c.context);
    r.ok = true;
  } catch (const Error& e) {
    r.text = e.what();
  }
  return r;
}

// Compares tessera with Jinja2 on every case: the same output byte for byte, or both failing
// with the same message (raise_exception's exactly, others after the line prefix). Returns the
// number of mismatches; `rendered` (if given) receives how many cases Jinja2 rendered without an
// error.
inline int compare_with_oracle(const std::vector<OracleCase>& cases, int* rendered = nullptr) {
  const auto expected = run_oracle(cases);
  if (expected.size() != cases.size()) {
    ADD_FAILURE() << "the oracle answered " << expected.size() << " of " << cases.size()
                  << " cases";
    return static_cast<int>(cases.size());
  }
  int mismatches = 0;
  if (rendered) *rendered = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    if (rendered && expected[k].ok) ++*rendered;
    ::setenv("TZ", "UTC", 1);
    const OracleResult ours = render_ours(cases[k]);
    const OracleResult& py = expected[k];
    bool same = ours.ok == py.ok;
    if (same && ours.ok) same = ours.text == py.text;
    if (same && !ours.ok) same = py.raised ? ours.text == py.text : same_error(py.text, ours.text);
    if (!same) {
      ++mismatches;
      ADD_FAILURE() << "case " << k << " (" << cases[k].name << ")\n  template: " << cases[k].tmpl
                    << "\n  context:  " << cases[k].context.dump()
                    << "\n  jinja2:   " << (py.ok ? "" : "ERROR ")
                    << nlohmann::json(py.text).dump(-1, ' ', false,
                                                    nlohmann::json::error_handler_t::replace)
                    << "\n  tessera:  " << (ours.ok ? "" : "ERROR ")
                    << nlohmann::json(ours.text).dump(-1, ' ', false,
                                                      nlohmann::json::error_handler_t::replace);
    }
  }
  return mismatches;
}

}  // namespace tessera::testing
