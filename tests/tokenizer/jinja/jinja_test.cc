// Hand-written expectations for each construct of tessera's Jinja interpreter.
#include "tokenizer/jinja/jinja.h"

#include <gtest/gtest.h>

#include "core/status.h"

namespace tessera::jinja {
namespace {

std::string render(std::string_view source, const Json& context = Json::object()) {
  return Template(source).render(context);
}

TEST(Jinja, PrintsText) {
  EXPECT_EQ(render("hello {{ 'world' }}"), "hello world");
}

}  // namespace
}  // namespace tessera::jinja
