/// @file
/// The umbrella header: all of coropipe.
#pragma once

#include <coropipe/attach.hpp>
#include <coropipe/channel.hpp>
#include <coropipe/child.hpp>
#include <coropipe/error.hpp>
#include <coropipe/exit_status.hpp>
#include <coropipe/fork.hpp>
#include <coropipe/frame.hpp>
#include <coropipe/framed_stream.hpp>
#include <coropipe/io.hpp>
#include <coropipe/pipe.hpp>
#include <coropipe/sigpipe.hpp>
#include <coropipe/unique_fd.hpp>
