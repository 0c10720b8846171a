// Model's accessors: the package, the shapes chosen at load, the sequence slots' positions,
// and the graph's buffers for planners outside the runtime.
#include "tierlm/model/model.hpp"

#include "model/exec_buffers.hpp"
#include "model/model_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm {

const Package& Model::package() const { return impl_->package; }
const ModelConfig& Model::config() const { return impl_->package.config; }
int64_t Model::vocab_size() const { return impl_->package.config.vocab_size; }
int64_t Model::context_length() const {
  return impl_->policy.evicts() ? kStreamingContext : impl_->context;
}
int64_t Model::prefill_chunk() const { return impl_->chunk; }
int64_t Model::position() const { return impl_->kv->length(0); }
int64_t Model::position(int32_t slot) const {
  TIERLM_CHECK(slot >= 0 && slot < impl_->max_batch, kErrorInvalidArgument, "slot ", slot,
               " is outside 0..", impl_->max_batch - 1, " (max_batch)");
  return impl_->kv->length(slot);
}
int64_t Model::max_batch() const { return impl_->max_batch; }
uint64_t Model::sequence_id() const { return impl_->sequence; }
const MemoryPlan& Model::memory_plan() const { return impl_->plan; }

std::vector<MemoryBuffer> Model::memory_buffers(int64_t seq) const {
  TIERLM_CHECK(seq > 0 && seq <= impl_->context, kErrorInvalidArgument, "memory_buffers: seq ", seq,
               " must be in 1..", impl_->context, " (the context length)");
  return detail::buffers_assign(impl_->package, *impl_->backend, seq, impl_->context,
                                impl_->max_batch)
      .buffers;
}

}  // namespace tierlm
