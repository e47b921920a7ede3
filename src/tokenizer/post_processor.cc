#include "tokenizer/post_processor.h"

#include <string>

#include "core/status.h"

namespace tessera::tokenizer {
namespace {

// Any template whose single form is "specials, $A, specials" (Template, Roberta, Bert).
class Wrap : public PostProcessor {
 public:
  Wrap(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}
  std::vector<int32_t> process(std::vector<int32_t> ids) const override {
    std::vector<int32_t> out;
    out.reserve(before_.size() + ids.size() + after_.size());
    out.insert(out.end(), before_.begin(), before_.end());
    out.insert(out.end(), ids.begin(), ids.end());
    out.insert(out.end(), after_.begin(), after_.end());
    return out;
  }

 private:
  std::vector<int32_t> before_, after_;
};

class Template : public PostProcessor {
 public:
  // Each item is either the sequence (empty vector + is_sequence) or special ids.
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit Template(std::vector<Item> items) : items_(std::move(items)) {}
  std::vector<int32_t> process(std::vector<int32_t> ids) const override {
    std::vector<int32_t> out;
    out.reserve(ids.size() + items_.size());
    for (const Item& item : items_) {
      if (item.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else {
        out.insert(out.end(), item.ids.begin(), item.ids.end());
      }
    }
    return out;
  }

 private:
  std::vector<Item> items_;
};

class Sequence : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  std::vector<int32_t> process(std::vector<int32_t> ids) const override {
    for (const auto& step : steps_) ids = step->process(std::move(ids));
    return ids;
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

std::unique_ptr<PostProcessor> parse_template(const nlohmann::json& json) {
  const auto& single = json.at("single");
  const auto& specials =
      json.contains("special_tokens") ? json.at("special_tokens") : nlohmann::json::object();
  std::vector<Template::Item> items;
  for (const auto& piece : single) {
    if (piece.contains("Sequence")) {
      items.push_back({true, {}});
    } else if (piece.contains("SpecialToken")) {
      const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
      if (!specials.contains(name))
        fail("TemplateProcessing: special token \"{}\" is missing from special_tokens", name);
      items.push_back({false, specials.at(name).at("ids").get<std::vector<int32_t>>()});
    } else {
      fail("TemplateProcessing: unknown template piece {}", piece.dump());
    }
  }
  return std::make_unique<Template>(std::move(items));
}

int32_t pair_id(const nlohmann::json& pair, const char* what) {
  if (!pair.is_array() || pair.size() != 2) fail("{} must be [token, id]", what);
  return pair[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_wrap_processor(std::vector<int32_t> before,
                                                   std::vector<int32_t> after) {
  return std::make_unique<Wrap>(std::move(before), std::move(after));
}

std::unique_ptr<PostProcessor> parse_post_processor(const nlohmann::json& json) {
  if (json.is_null()) return nullptr;
  const std::string type = json.at("type").get<std::string>();
  if (type == "TemplateProcessing") return parse_template(json);
  if (type == "ByteLevel")
    return std::make_unique<Sequence>(
        std::vector<std::unique_ptr<PostProcessor>>{});  // offsets only: ids are unchanged
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    return make_wrap_processor({pair_id(json.at("cls"), "cls")}, {pair_id(json.at("sep"), "sep")});
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (const auto& step : json.at("processors")) {
      if (auto p = parse_post_processor(step)) steps.push_back(std::move(p));
    }
    return std::make_unique<Sequence>(std::move(steps));
  }
  fail(ErrorKind::kUnsupported,
       "unsupported post_processor type \"{}\" (supported: TemplateProcessing, ByteLevel, "
       "RobertaProcessing, BertProcessing, Sequence)",
       type);
}

}  // namespace tessera::tokenizer
