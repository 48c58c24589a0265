// SPDX-License-Identifier: BSL-1.0
/// @file
/// The umbrella header: all of coropipe.
#pragma once

#include <coropipe/address.hpp>
#include <coropipe/attach.hpp>
#include <coropipe/batch.hpp>
#include <coropipe/channel.hpp>
#include <coropipe/child.hpp>
#include <coropipe/communicate.hpp>
#include <coropipe/decode_error.hpp>
#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/fd_passing.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/frame.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/handshake.hpp>
#include <coropipe/io.hpp>
#include <coropipe/launcher.hpp>
#include <coropipe/line_reader.hpp>
#include <coropipe/listener.hpp>
#include <coropipe/pickle.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/pipeline.hpp>
#include <coropipe/pool.hpp>
#include <coropipe/scope.hpp>
#include <coropipe/sigpipe.hpp>
#include <coropipe/spawn.hpp>
#include <coropipe/unique_fd.hpp>
