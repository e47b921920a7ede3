// Runs one step's StepInputs through the model. The model runner is the only engine part that
// builds tensors: it turns the integer arrays into device tensors and the attention metadata.
// With pipeline stages it also moves hidden states from stage to stage: a step's sequences are
// split into pp micro-batches so that stage s works on micro-batch i + 1 while stage s + 1 works
// on micro-batch i, and the last stage sends the logits to the driver (world rank 0).
#pragma once

#include <deque>

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "distributed/communicator.h"
#include "distributed/world_config.h"
#include "engine/step_inputs.h"
#include "model/model.h"

namespace tessera {

class ModelExecutor {
 public:
  virtual ~ModelExecutor() = default;
  virtual const ModelConfig& config() const = 0;
  // Logits [logit_rows, vocab] f32 in host memory, or with inputs.greedy_only each logit row's
  // argmax [logit_rows] int32 (on ranks other than the driver: an empty tensor).
  virtual Tensor execute(const StepInputs& inputs) = 0;
  // Steps in flight (pipeline parallelism keeps one per stage): submit starts a step, complete
  // returns the logits of the oldest submitted step, as execute would. By default submit runs
  // the whole step.
  virtual void submit(const StepInputs& inputs) { done_.push_back(execute(inputs)); }
  virtual Tensor complete() {
    Tensor t = std::move(done_.front());
    done_.pop_front();
    return t;
  }
  // Checks that every rank still answers, for an idle server (steps find a dead or hung rank
  // themselves); throws DistributedError otherwise. Nothing to check with one rank.
  virtual void heartbeat() {}

 private:
  std::deque<Tensor> done_;
};

// The communicators a pipeline-parallel runner needs.
struct PipelineLinks {
  WorldConfig world_config;
  Communicator* world = nullptr;  // to send logits to the driver
  Communicator* pp = nullptr;     // this rank's pipeline group (group rank = stage)
};

// A step's sequences cut into `parts` contiguous groups (fewer when there are fewer sequences).
// `logit_index[k]` lists, for micro-batch k, the positions in in.logit_rows its logit rows
// come from, in order.
struct MicroBatches {
  std::vector<StepInputs> parts;
  std::vector<std::vector<int32_t>> logit_index;
};
MicroBatches split_micro_batches(const StepInputs& in, int parts);

// One rank's model and KV cache.
class ModelRunner : public ModelExecutor {
 public:
  ModelRunner(Backend& backend, CausalLM& model, KVCache& cache, PipelineLinks links = {});
  const ModelConfig& config() const override { return model_.config(); }
  Tensor execute(const StepInputs& inputs) override;
  // This rank's part of the model on a step, with no pipeline traffic: a later stage takes zero
  // hidden states. The output stays on the device. What a profiling step runs
  // (engine/profile_run.h).
  Tensor forward_local(const StepInputs& inputs);
  // Decode steps (one new token per sequence, one rank per pipeline: pp = 1) through static
  // batches of the given sizes: a step of n sequences runs as the smallest size >= n, padded with
  // sequences that write no KV and whose logits nobody reads, from device buffers that stay in
  // place, so that the backend records each size once and replays it (CUDA graphs). Where the
  // backend cannot record, the static batches run op by op (what the CPU tests check). Returns
  // the sizes recorded. Call once, after a step of --max-num-batched-tokens (the profiling step)
  // has grown the model's buffers: recorded ops must keep reading the same ones.
  std::vector<int> capture_decode_steps(std::vector<int> batch_sizes, int64_t max_model_len);
  // Steps that ran through a static batch so far (recorded or not).
  int64_t static_steps() const { return static_steps_; }
  // Pipeline stages: micro-batches per step (default pp; 1 when the engine keeps a step per
  // stage in flight). Every rank must use the same value.
  void set_micro_batches(int n) { micro_batches_ = n; }
  // When stages take turns on shared cores: after handing a step on, the rank parks this pool's
  // workers at once, so that the next stage's threads get the cores without waiting for them to
  // stop spinning.
  void set_shared_cores_pool(ThreadPool* pool) { shared_cores_pool_ = pool; }
  int pipeline_stages() const { return links_.world_config.pp; }
  // Half-steps with pp > 1: begin runs this stage on the step and starts sending its hidden
  // states on (the last stage: its logits to the driver); finish completes the oldest begun
  // step: on the driver it receives the step's logits from the last stage, on every rank it
  // waits for that step's own sends (not newer ones, which the next stage may take only after
  // the driver has received older logits). execute = begin + finish.
  void begin(const StepInputs& in);
  Tensor finish();
  // Worker ranks: finishes the oldest steps whose sends have completed, and more (waiting) until
  // at most `keep` are still in flight; a stage thus goes on to the next step while the next
  // stage or the driver has yet to take this one's output.
  void retire(size_t keep);

 private:
  struct InFlight {
    StepInputs inputs;
    MicroBatches mb;
    std::vector<Tensor> outgoing;  // alive until the asynchronous sends complete
    // The communicators' send counts after this step's sends (Communicator::wait_sends).
    uint64_t pp_sends = 0, world_sends = 0;
  };
  Tensor to_device(const std::vector<int32_t>& values, std::initializer_list<int64_t> shape);
  // Each row's argmax [R] int32, on the backend's device.
  Tensor argmax(const Tensor& logits);
  ForwardBatch make_batch(const StepInputs& in);
  Tensor execute_pipelined(const StepInputs& in);
  // A decode step's logits through its static batch, or an undefined tensor when none fits.
  Tensor run_static(const StepInputs& in);

  // One static decode batch of `size` sequences.
  struct StaticBatch {
    int size = 0;
    // int32 on the device: token_ids [B] | positions [B] | slot_mapping [B] | query_start [B+1]
    // | seq_lens [B] | logit_rows [B] | block_tables [B, max_blocks].
    Tensor inputs;
    ForwardBatch batch;                // views of `inputs`
    std::unique_ptr<CapturedOps> ops;  // null: run op by op
    Tensor logits;                     // [B, vocab], written by each run
  };
  // The host side of a static batch's inputs for step `in` (padded to `size` sequences), and
  // their copy into the batch's device buffer.
  std::vector<int32_t> static_inputs(const StepInputs& in, int size) const;
  void fill_static(StaticBatch& sb, const StepInputs& in);

  Backend& backend_;
  CausalLM& model_;
  KVCache& cache_;
  PipelineLinks links_;
  int micro_batches_ = 0;  // 0: pp
  ThreadPool* shared_cores_pool_ = nullptr;
  std::deque<InFlight> in_flight_;
  std::vector<StaticBatch> static_;  // by size, ascending
  int32_t static_max_blocks_ = 0;    // block table width of the static batches
  int64_t static_steps_ = 0;
};

}  // namespace tessera
